// EMA and KL-divergence range calibration for activation quantizers.
#include "quantizers/calibration.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"

namespace qsearch::quantizers {

// Defined in schemes.cc next to the quantizer class they reach into.
void SetActivationRange(Quantizer& q, double lo, double hi);
double ActivationRange(const Quantizer& q);

RangeCalibrator::RangeCalibrator(CalibrationOptions options) : options_(options) {
  hist_.assign(std::max(options_.bins, 16), 0.0);
}

void RangeCalibrator::Rebin(double new_max) {
  // Doubling the covered range merges bin pairs, so earlier batches need not be kept.
  while (hist_max_ < new_max) {
    const size_t n = hist_.size();
    std::vector<double> merged(n, 0.0);
    for (size_t i = 0; i < n; ++i) merged[i / 2] += hist_[i];
    hist_ = std::move(merged);
    hist_max_ *= 2;
  }
}

absl::Status RangeCalibrator::Observe(const at::Tensor& batch) {
  if (!batch.defined() || batch.numel() == 0) {
    return absl::InvalidArgumentError("calibration batch is empty");
  }
  at::Tensor x = batch.detach().to(at::kFloat).flatten();
  if (!at::isfinite(x).all().item<bool>()) {
    return absl::InvalidArgumentError("calibration batch contains NaN or Inf");
  }
  const double lo = x.min().item<double>(), hi = x.max().item<double>();
  if (batches_ == 0) {
    ema_lo_ = lo;
    ema_hi_ = hi;
  } else {
    const double m = options_.momentum;
    ema_lo_ = m * ema_lo_ + (1 - m) * lo;
    ema_hi_ = m * ema_hi_ + (1 - m) * hi;
  }
  at::Tensor mag = options_.is_signed ? x.abs() : x.clamp_min(0);
  const double top = mag.max().item<double>();
  if (hist_max_ == 0) {
    hist_max_ = top > 0 ? top : 1.0;
  } else {
    Rebin(top);
  }
  const int bins = static_cast<int>(hist_.size());
  at::Tensor h = at::histc(mag, bins, 0, hist_max_).to(at::kCPU, at::kDouble).contiguous();
  const double* hp = h.data_ptr<double>();
  for (int i = 0; i < bins; ++i) hist_[i] += hp[i];
  // Exact zeros (half of every ReLU output) are representable on any grid; left in, their
  // spike in bin 0 dominates the divergence and drags the threshold toward zero.
  hist_[0] -= (mag == 0).sum().item<double>();
  ++batches_;
  return absl::OkStatus();
}

double RangeCalibrator::KlThreshold() const {
  const int bins = static_cast<int>(hist_.size());
  const int levels = options_.is_signed ? 1 << (options_.bits - 1) : 1 << options_.bits;
  const double width = hist_max_ / bins;
  if (levels >= bins) return hist_max_;
  double best_kl = std::numeric_limits<double>::infinity();
  int best = bins;
  double tail = 0;
  for (int i = bins - 1; i >= levels; --i) tail += hist_[i];
  // tail now holds the mass at and above bin `levels`; walk i upward removing it.
  for (int i = levels; i <= bins; ++i) {
    // Reference P: first i bins, with the clipped mass folded into the last one.
    std::vector<double> p(hist_.begin(), hist_.begin() + i);
    p[i - 1] += tail;
    // Candidate Q: the first i bins merged into `levels` chunks, each chunk's mass spread
    // evenly over its non-empty bins.
    std::vector<double> q(i, 0.0);
    for (int c = 0; c < levels; ++c) {
      const int b0 = static_cast<int>(static_cast<long long>(c) * i / levels);
      const int b1 = static_cast<int>(static_cast<long long>(c + 1) * i / levels);
      double mass = 0;
      int nonzero = 0;
      for (int j = b0; j < b1; ++j) {
        mass += hist_[j];
        nonzero += hist_[j] > 0;
      }
      if (nonzero == 0) continue;
      for (int j = b0; j < b1; ++j) {
        if (hist_[j] > 0) q[j] = mass / nonzero;
      }
    }
    double ps = 0, qs = 0;
    for (int j = 0; j < i; ++j) {
      ps += p[j];
      qs += q[j];
    }
    if (ps > 0 && qs > 0) {
      double kl = 0;
      for (int j = 0; j < i; ++j) {
        if (p[j] <= 0) continue;
        const double pj = p[j] / ps;
        const double qj = q[j] > 0 ? q[j] / qs : 1e-12;
        kl += pj * std::log(pj / qj);
      }
      if (kl < best_kl) {
        best_kl = kl;
        best = i;
      }
    }
    if (i < bins) tail -= hist_[i];
  }
  return best * width;
}

absl::StatusOr<std::pair<double, double>> RangeCalibrator::Range() const {
  if (batches_ == 0) {
    return absl::FailedPreconditionError("calibration has observed no batch yet");
  }
  if (options_.method == CalibrationMethod::kEma) {
    if (options_.is_signed) {
      const double m = std::max(std::fabs(ema_lo_), std::fabs(ema_hi_));
      return std::make_pair(-m, m);
    }
    return std::make_pair(0.0, std::max(ema_hi_, 0.0));
  }
  const double t = KlThreshold();
  return std::make_pair(options_.is_signed ? -t : 0.0, t);
}

absl::Status ApplyRange(Quantizer& quantizer, double lo, double hi) {
  if (quantizer.scheme().name != "uniform_act" || quantizer.passthrough()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "only uniform_act quantizers take a calibrated range, not '", quantizer.ToSpec(), "'"));
  }
  if (!(std::isfinite(lo) && std::isfinite(hi) && hi >= lo)) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibrated range [", lo, ", ", hi, "] is not a finite interval"));
  }
  SetActivationRange(quantizer, lo, hi);
  return absl::OkStatus();
}

absl::StatusOr<double> CurrentRange(const Quantizer& quantizer) {
  if (quantizer.scheme().name != "uniform_act" || quantizer.passthrough()) {
    return absl::InvalidArgumentError("only uniform_act quantizers keep a running range");
  }
  return ActivationRange(quantizer);
}

}  // namespace qsearch::quantizers
