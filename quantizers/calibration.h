// Offline calibration of activation clip ranges (MXNet's quantization tool): observe a
// few batches, then fix a uniform_act quantizer's range either to an EMA of batch
// min/max or to the threshold that minimises the KL divergence between the observed
// histogram and its quantized version (TensorRT-style entropy calibration).
#ifndef QSEARCH_QUANTIZERS_CALIBRATION_H_
#define QSEARCH_QUANTIZERS_CALIBRATION_H_

#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "quantizers/quantizer.h"

namespace qsearch::quantizers {

enum class CalibrationMethod { kEma, kKl };

struct CalibrationOptions {
  CalibrationMethod method = CalibrationMethod::kEma;
  int bits = 8;
  bool is_signed = false;  // symmetric range around zero instead of [0, max]
  double momentum = 0.9;   // EMA only
  int bins = 2048;         // KL only
};

class RangeCalibrator {
 public:
  explicit RangeCalibrator(CalibrationOptions options);

  // Adds one batch. InvalidArgument for an empty tensor or NaN/Inf values.
  absl::Status Observe(const at::Tensor& batch);
  // (lo, hi) clip range. FailedPrecondition before any Observe().
  absl::StatusOr<std::pair<double, double>> Range() const;

 private:
  double KlThreshold() const;
  void Rebin(double new_max);

  CalibrationOptions options_;
  int batches_ = 0;
  double ema_lo_ = 0, ema_hi_ = 0;
  double hist_max_ = 0;        // histogram covers [0, hist_max_]
  std::vector<double> hist_;   // over |x| (signed) or max(x, 0) (unsigned)
};

// Fixes a uniform_act quantizer's clip range. InvalidArgument for any other scheme.
absl::Status ApplyRange(Quantizer& quantizer, double lo, double hi);
// The clip range a uniform_act quantizer currently uses (its max |x| or max x).
absl::StatusOr<double> CurrentRange(const Quantizer& quantizer);

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_CALIBRATION_H_
