// Every registered scheme: its statistics (Prepare) and level count. The element-wise
// level functions live in point_kernel.cc; MakeQuantizer is at the bottom.
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quantizers/composite.h"
#include "quantizers/fractional.h"
#include "quantizers/quantizer.h"
#include "quantizers/replicas.h"
#include "quantizers/row_stats.h"
#include "quantizers/torch_status.h"

namespace qsearch::quantizers {
namespace {

constexpr float kTiny = 1e-12f;

// An activation's observed range on the whole batch: this process's share combined with
// the other replicas' (replicas.h) when the job runs data-parallel.
std::pair<double, double> MinMax(const at::Tensor& x) {
  const auto [lo, hi] = at::aminmax(x);
  Replicas* r = ActiveReplicas();
  if (r == nullptr) return {lo.item<double>(), hi.item<double>()};
  at::Tensor both = at::stack({-lo, hi}).to(at::kDouble);
  r->Max(both);
  return {-both[0].item<double>(), both[1].item<double>()};
}

// mean(|x|) over the whole batch, likewise.
double MeanAbs(const at::Tensor& x) {
  Replicas* r = ActiveReplicas();
  if (r == nullptr) return x.abs().mean().item<double>();
  at::Tensor parts = at::stack({x.abs().sum().to(at::kDouble), at::scalar_tensor(double(x.numel()), x.options().dtype(at::kDouble))});
  r->Sum(parts);
  return parts[0].item<double>() / std::max(parts[1].item<double>(), 1.0);
}

// Builds a [segments, kPointTableWidth] table from per-segment columns ([G] tensors or
// scalars broadcast over the G segments).
struct Column {
  Column(const at::Tensor& t) : tensor(t) {}  // NOLINT: columns read naturally inline
  Column(double v) : scalar(v) {}              // NOLINT
  Column(std::vector<double> v) : values(std::move(v)) {}  // NOLINT
  at::Tensor tensor;
  std::vector<double> values;
  double scalar = 0;
};
at::Tensor Table(std::int64_t segments, std::initializer_list<Column> cols) {
  // Filled through raw pointers: a handful of tiny ATen ops per column would cost more
  // than the kernel itself on weight-sized tensors.
  at::Tensor t = at::zeros({segments, kPointTableWidth}, at::kFloat);
  float* out = t.data_ptr<float>();
  int j = 0;
  for (const Column& c : cols) {
    if (!c.values.empty()) {
      for (std::int64_t r = 0; r < segments; ++r) out[r * kPointTableWidth + j] = static_cast<float>(c.values[r]);
    } else if (c.tensor.defined()) {
      const at::Tensor col = c.tensor.to(at::kFloat).cpu().contiguous();  // statistics of a CUDA tensor too
      const float* v = col.data_ptr<float>();
      const bool broadcast = col.numel() == 1;
      for (std::int64_t r = 0; r < segments; ++r) out[r * kPointTableWidth + j] = v[broadcast ? 0 : r];
    } else {
      for (std::int64_t r = 0; r < segments; ++r) {
        out[r * kPointTableWidth + j] = static_cast<float>(c.scalar);
      }
    }
    ++j;
  }
  return t;
}
PointForm Form(PointKind kind, at::Tensor table, std::int64_t segment_size) {
  PointForm f;
  f.kind = kind;
  f.table = std::move(table);
  f.segment_size = segment_size;
  return f;
}
// Per-row v * scale, with rows that come out non-positive set to 1 (a constant row).
std::vector<double> ScaledNonZero(std::vector<double> v, double scale) {
  for (double& e : v) e = e * scale > 0 ? e * scale : 1.0;
  return v;
}
double Pow2(double e) { return std::ldexp(1.0, static_cast<int>(e)); }

// Weight schemes share the segment layout; this base holds it.
class WeightQuantizer : public Quantizer {
 protected:
  using Quantizer::Quantizer;
  // x viewed as [segments, segment_size], detached.
  at::Tensor Rows(const at::Tensor& x, std::int64_t* seg) const {
    *seg = SegmentSize(x);
    return x.detach().reshape({-1, *seg});
  }
  // The statistics of those rows (shared between the candidates of one mixture).
  const RowStats& Stats(const at::Tensor& x) const { return SharedRowStats(x, SegmentSize(x)); }
};

class UniformQuantizer : public WeightQuantizer {
 public:
  using WeightQuantizer::WeightQuantizer;
  std::int64_t LevelCount() const override {
    const std::int64_t n = std::int64_t{1} << static_cast<int>(bits());
    return symmetric_signed() ? n - 1 : n;
  }
  bool Idempotent() const override { return values().Bool("symmetric"); }
  PointForm Prepare(const at::Tensor& x) override {
    const RowStats& st = Stats(x);
    const std::int64_t g = st.rows(), seg = st.segment_size;
    const double b = bits();
    if (symmetric_signed()) {
      const double qmax = Pow2(b - 1) - 1;
      return Form(PointKind::kAffine, Table(g, {ScaledNonZero(st.abs_max, 1 / qmax), 0.0, -qmax, qmax, 0.0, 0.0}),
                  seg);
    }
    const double qmax = Pow2(b) - 1;
    if (values().Bool("symmetric")) {  // unsigned grid [0, max]; rows with no positive value get 1
      return Form(PointKind::kAffine, Table(g, {ScaledNonZero(st.max, 1 / qmax), 0.0, 0.0, qmax, 0.0, 0.0}), seg);
    }
    // Asymmetric min-max with 0 inside the range, so zero stays exactly representable.
    std::vector<double> range(g), zero(g);
    for (std::int64_t r = 0; r < g; ++r) range[r] = std::max(st.max[r], 0.0) - std::min(st.min[r], 0.0);
    std::vector<double> scale = ScaledNonZero(std::move(range), 1 / qmax);
    for (std::int64_t r = 0; r < g; ++r) {
      // In float, as the kernel holds the scale: round(-lo / s) on the stored values.
      zero[r] = std::nearbyint(-static_cast<float>(std::min(st.min[r], 0.0)) / static_cast<float>(scale[r]));
    }
    return Form(PointKind::kAffine, Table(g, {std::move(scale), std::move(zero), 0.0, qmax, 0.0, 0.0}), seg);
  }

 private:
  bool symmetric_signed() const {
    return values().Bool("symmetric") && values().Bool("signed");
  }
};

// LSQ for weights (per tensor) and activations: step initialised from the first batch,
// gradient scaled by 1/sqrt(N * Qp) as in the paper.
class LsqQuantizer : public Quantizer {
 public:
  explicit LsqQuantizer(SpecValues v) : Quantizer(std::move(v)) {
    step_ = register_parameter("step", at::ones({1}));
    initialized_ = register_buffer("initialized", at::zeros({1}));
  }
  std::int64_t LevelCount() const override { return qn() + qp() + 1; }
  bool Idempotent() const override { return true; }
  PointForm Prepare(const at::Tensor& x) override {
    at::NoGradGuard no_grad;
    if (initialized_.item<float>() == 0) {
      step_.fill_(std::max(2.0 * MeanAbs(x) / std::sqrt(qp()), 1e-8));
      initialized_.fill_(1);
    }
    at::Tensor s = step_.detach().clamp_min(1e-8);
    const bool clip = true;  // LSQ's own gradient is zero outside the code range
    PointForm f = Form(PointKind::kAffine,
                       Table(1, {s, 0.0, -double(qn()), double(qp()), clip ? 1.0 : 0.0, 1.0}),
                       x.numel());
    f.learned = step_;
    // N counts the whole batch's activations: a data-parallel share holds part of them,
    // and its step gradient is summed with the other shares'.
    double elems = static_cast<double>(x.numel());
    if (Replicas* r = ActiveReplicas(); r != nullptr && role() == Role::kActivation) elems *= r->WholeBatchRatio();
    f.learned_grad_scale = 1.0 / std::sqrt(elems * qp());
    return f;
  }

 private:
  bool is_signed() const { return values().Bool("signed"); }
  std::int64_t qn() const {
    return is_signed() ? std::int64_t{1} << (static_cast<int>(bits()) - 1) : 0;
  }
  std::int64_t qp() const {
    const int b = static_cast<int>(bits());
    return is_signed() ? (std::int64_t{1} << (b - 1)) - 1 : (std::int64_t{1} << b) - 1;
  }
  at::Tensor step_, initialized_;
};

class DorefaQuantizer : public WeightQuantizer {
 public:
  using WeightQuantizer::WeightQuantizer;
  std::int64_t LevelCount() const override { return std::int64_t{1} << static_cast<int>(bits()); }
  PointForm Prepare(const at::Tensor& x) override {
    const RowStats& st = Stats(x);
    const std::int64_t g = st.rows(), seg = st.segment_size;
    if (bits() == 1) {  // DoReFa's 1-bit case: sign(W) * mean|W|
      return Form(PointKind::kBinary, Table(g, {st.abs_mean}), seg);
    }
    std::vector<double> m(g);  // max |tanh(w)| = tanh(max |w|): tanh is odd and increasing
    for (std::int64_t r = 0; r < g; ++r) m[r] = std::max<double>(std::tanh(static_cast<float>(st.abs_max[r])), kTiny);
    return Form(PointKind::kDorefa, Table(g, {std::move(m), Pow2(bits()) - 1}), seg);
  }
};

class BinaryQuantizer : public WeightQuantizer {
 public:
  using WeightQuantizer::WeightQuantizer;
  std::int64_t LevelCount() const override { return 2; }
  bool Idempotent() const override { return true; }
  PointForm Prepare(const at::Tensor& x) override {
    const RowStats& st = Stats(x);
    return Form(PointKind::kBinary, Table(st.rows(), {st.abs_mean}), st.segment_size);
  }
};

class TernaryQuantizer : public WeightQuantizer {
 public:
  using WeightQuantizer::WeightQuantizer;
  std::int64_t LevelCount() const override { return 3; }
  // Q(Q(x)) keeps the same non-zero set only while the threshold is below mean |W|.
  bool Idempotent() const override { return values().Real("threshold") < 1; }
  PointForm Prepare(const at::Tensor& x) override {
    std::int64_t seg;
    at::Tensor a = Rows(x, &seg).abs();
    at::Tensor delta = values().Real("threshold") * a.mean(1);
    at::Tensor above = (a > delta.unsqueeze(1)).to(at::kFloat);
    at::Tensor count = above.sum(1);
    at::Tensor alpha = at::where(count > 0, (a * above).sum(1) / count.clamp_min(1), delta);
    return Form(PointKind::kTernary, Table(a.size(0), {delta, alpha}), seg);
  }
};

class ResidualQuantizer : public WeightQuantizer {
 public:
  using WeightQuantizer::WeightQuantizer;
  std::int64_t LevelCount() const override { return std::int64_t{1} << static_cast<int>(bits()); }
  PointForm Prepare(const at::Tensor& x) override {
    std::int64_t seg;
    at::Tensor r = Rows(x, &seg).clone();
    const std::int64_t g = r.size(0);
    const int count = static_cast<int>(bits());
    at::Tensor table = at::zeros({g, kPointTableWidth}, at::kFloat);
    table.select(1, 0).fill_(count);
    for (int j = 0; j < count; ++j) {
      at::Tensor a = r.abs().mean(1);
      table.select(1, 1 + j).copy_(a);
      r -= at::where(r >= 0, a.unsqueeze(1), -a.unsqueeze(1));
    }
    return Form(PointKind::kResidual, table, seg);
  }
};

// pot and esb: minifloat magnitudes with k fraction bits and E exponents, scaled so the
// largest level meets max |W|. E is capped at 32 octaves: pot at 8 bits would otherwise
// ask for levels 2^-126 * max, below float range; the cap only lowers LevelCount's use.
class LogQuantizer : public WeightQuantizer {
 public:
  using WeightQuantizer::WeightQuantizer;
  std::int64_t LevelCount() const override {
    const int b = static_cast<int>(bits());
    return 2 * ((std::int64_t{1} << (b - 1)) - 1) + 1;
  }
  bool Idempotent() const override { return true; }
  PointForm Prepare(const at::Tensor& x) override {
    const RowStats& st = Stats(x);
    const int b = static_cast<int>(bits());
    const int k = scheme().name == "esb" ? static_cast<int>(values().Int("k")) : 0;
    const int exponents = std::min((1 << (b - 1 - k)) - 1, 32);
    const double max_level =
        exponents > 0 ? Pow2(exponents - 1) * (2.0 - Pow2(-k)) : 1.0 - Pow2(-k);
    return Form(PointKind::kLog,
                Table(st.rows(), {ScaledNonZero(st.abs_max, 1 / max_level), double(k), double(exponents), max_level}),
                st.segment_size);
  }
};

// Step of the optimal uniform quantizer for a unit Gaussian with 2^b levels (Max, 1960),
// the lambda_b table uL2Q and VecQ scale their grids by.
double GaussianStep(int b) {
  static constexpr double kStep[] = {1.596, 0.9957, 0.5860, 0.3352,
                                     0.1881, 0.1041, 0.0569, 0.0308};
  return kStep[b - 1];
}

class HalfGridQuantizer : public WeightQuantizer {
 public:
  using WeightQuantizer::WeightQuantizer;
  std::int64_t LevelCount() const override { return std::int64_t{1} << static_cast<int>(bits()); }
  PointForm Prepare(const at::Tensor& x) override {
    const RowStats& st = Stats(x);
    const int b = static_cast<int>(bits());
    const std::int64_t g = st.rows(), seg = st.segment_size;
    const bool vecq = scheme().name == "vecq";
    const double lo = -Pow2(b - 1), hi = Pow2(b - 1) - 1;
    PointForm f = Form(PointKind::kHalfGrid,
                       Table(g, {ScaledNonZero(st.std, GaussianStep(b)), vecq ? Column(0.0) : Column(st.mean), lo, hi,
                                 1.0, 0.0}),
                       seg);
    if (vecq) {
      const at::Tensor r = x.detach().reshape({-1, seg});
      // VecQ keeps the vector's length: rescale the grid so ||Q(w)|| = ||w|| per segment.
      at::Tensor grid = at::empty_like(r);
      at::Tensor rc = r.contiguous();
      f.table = f.table.contiguous();
      MixtureForward(rc, {f}, {1.0f}, grid);
      at::Tensor ratio = r.norm(2, 1) / grid.norm(2, 1).clamp_min(kTiny);
      f.table.select(1, 4).copy_(ratio);
    }
    return f;
  }
};

class UniformActQuantizer : public Quantizer {
 public:
  explicit UniformActQuantizer(SpecValues v) : Quantizer(std::move(v)) {
    range_ = register_buffer("range", at::zeros({1}));
    steps_ = register_buffer("steps", at::zeros({1}, at::kLong));
    seen_ = register_buffer("seen", at::zeros({1}));
    frozen_ = register_buffer("frozen", at::zeros({1}));
  }
  std::int64_t LevelCount() const override {
    const std::int64_t n = std::int64_t{1} << static_cast<int>(bits());
    return values().Bool("signed") ? n - 1 : n;
  }
  // Once the range is fixed (eval mode or calibrated), Q(Q(x)) == Q(x).
  bool Idempotent() const override { return true; }
  PointForm Prepare(const at::Tensor& x) override {
    at::NoGradGuard no_grad;
    const bool is_signed = values().Bool("signed");
    if (is_training() && frozen_.item<float>() == 0) {
      steps_ += 1;
      // One min/max pass; x.abs() would first write a full-size temporary.
      const auto [lo, hi] = MinMax(x.detach());
      const double batch = is_signed ? std::max(-lo, hi) : std::max(hi, 0.0);
      const double m = values().Real("momentum");
      if (seen_.item<float>() == 0) {
        range_.fill_(batch);
        seen_.fill_(1);
      } else {
        range_.mul_(m).add_(batch * (1 - m));
      }
    }
    const bool warming = is_training() && frozen_.item<float>() == 0 &&
                         steps_.item<std::int64_t>() <= values().Int("start_step");
    if (warming || seen_.item<float>() == 0) {
      return Form(PointKind::kIdentity, Table(1, {}), x.numel());
    }
    const double b = bits();
    const double qmax = is_signed ? Pow2(b - 1) - 1 : Pow2(b) - 1;
    const double s = std::max(range_.item<double>() / qmax, 1e-12);
    return Form(PointKind::kAffine, Table(1, {s, 0.0, is_signed ? -qmax : 0.0, qmax, 1.0, 0.0}),
                x.numel());
  }
  // Fixes the clip range (offline calibration): no further EMA updates.
  void SetRange(double lo, double hi) {
    const double r = values().Bool("signed") ? std::max(std::fabs(lo), std::fabs(hi)) : hi;
    range_.fill_(std::max(r, 0.0));
    seen_.fill_(1);
    frozen_.fill_(1);
  }
  double range() const { return range_.item<double>(); }

 private:
  at::Tensor range_, steps_, seen_, frozen_;
};

class PactQuantizer : public Quantizer {
 public:
  explicit PactQuantizer(SpecValues v) : Quantizer(std::move(v)) {
    alpha_ = register_parameter("alpha", at::full({1}, values().Real("alpha")));
  }
  std::int64_t LevelCount() const override { return std::int64_t{1} << static_cast<int>(bits()); }
  bool Idempotent() const override { return true; }
  PointForm Prepare(const at::Tensor& x) override {
    const double n = Pow2(bits()) - 1;
    at::Tensor s = alpha_.detach().clamp_min(1e-3) / n;
    PointForm f = Form(PointKind::kAffine, Table(1, {s, 0.0, 0.0, n, 1.0, 2.0}), x.numel());
    f.learned = alpha_;
    return f;
  }

 private:
  at::Tensor alpha_;
};

class DorefaActQuantizer : public Quantizer {
 public:
  using Quantizer::Quantizer;
  std::int64_t LevelCount() const override { return std::int64_t{1} << static_cast<int>(bits()); }
  bool Idempotent() const override { return true; }
  PointForm Prepare(const at::Tensor& x) override {
    const double n = Pow2(bits()) - 1;
    return Form(PointKind::kAffine, Table(1, {1.0 / n, 0.0, 0.0, n, 1.0, 0.0}), x.numel());
  }
};

class PassthroughQuantizer : public Quantizer {
 public:
  using Quantizer::Quantizer;
  std::int64_t LevelCount() const override { return std::numeric_limits<std::int64_t>::max(); }
  bool Idempotent() const override { return true; }
  PointForm Prepare(const at::Tensor& x) override {
    return Form(PointKind::kIdentity, Table(1, {}), x.numel());
  }
  at::Tensor forward(const at::Tensor& x) override { return x; }
};

// Integer-bit quantizer for a validated spec.
std::shared_ptr<Quantizer> MakeInteger(SpecValues v) {
  const std::string& name = v.scheme().name;
  if (v.Real("bits") == 32) return std::make_shared<PassthroughQuantizer>(std::move(v));
  if (name == "uniform") return std::make_shared<UniformQuantizer>(std::move(v));
  if (name == "lsq" || name == "lsq_act") return std::make_shared<LsqQuantizer>(std::move(v));
  if (name == "dorefa") return std::make_shared<DorefaQuantizer>(std::move(v));
  if (name == "binary") return std::make_shared<BinaryQuantizer>(std::move(v));
  if (name == "ternary") return std::make_shared<TernaryQuantizer>(std::move(v));
  if (name == "residual") return std::make_shared<ResidualQuantizer>(std::move(v));
  if (name == "pot" || name == "esb") return std::make_shared<LogQuantizer>(std::move(v));
  if (name == "vecq" || name == "ul2q") return std::make_shared<HalfGridQuantizer>(std::move(v));
  if (name == "uniform_act") return std::make_shared<UniformActQuantizer>(std::move(v));
  if (name == "pact") return std::make_shared<PactQuantizer>(std::move(v));
  if (name == "dorefa_act") return std::make_shared<DorefaActQuantizer>(std::move(v));
  return nullptr;  // unreachable: ParseSpec only accepts registered names
}

}  // namespace

// ---- Quantizer ----

std::int64_t Quantizer::SegmentSize(const at::Tensor& x) const {
  const SchemeInfo& s = scheme();
  if (s.FindParam("granularity") == nullptr) return x.numel();
  const std::string& g = values_.Text("granularity");
  if (g == "tensor" || x.dim() < 2) return x.numel();
  const std::int64_t channel = x.numel() / x.size(0);
  return g == "channel" ? channel : values_.Int("group_size");
}

absl::Status CheckFinite(const at::Tensor& x, absl::string_view who) {
  const bool finite = CatchTorch("finite check", [&] {
                        return at::isfinite(x.detach()).all().item<bool>();
                      }).value_or(false);
  if (!finite) return absl::InvalidArgumentError(absl::StrCat(who, ": input contains NaN or Inf"));
  return absl::OkStatus();
}

absl::Status Quantizer::Validate(const at::Tensor& x) const {
  RETURN_IF_ERROR(ValidateShape(x));
  return CheckFinite(x, absl::StrCat("quantizer '", scheme().name, "'"));
}

absl::Status Quantizer::ValidateShape(const at::Tensor& x) const {
  const std::string who = absl::StrCat("quantizer '", scheme().name, "'");
  if (!x.defined() || x.numel() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": input tensor is empty"));
  }
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": input must be float32 or float64, got ",
                                                   c10::toString(x.scalar_type())));
  }
  if (scheme().FindParam("granularity") != nullptr) {
    const std::string& g = values_.Text("granularity");
    if (g != "tensor" && x.dim() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": granularity=", g, " needs a tensor with an output-channel dimension (rank >= 2), "
          "got rank ", x.dim(), "; use granularity=tensor"));
    }
    if (g == "group") {
      const std::int64_t channel = x.numel() / x.size(0);
      const std::int64_t group = values_.Int("group_size");
      if (channel % group != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            who, ": group_size=", group, " does not divide the ", channel,
            " weights of each output channel"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Quantizer::Quantize(const at::Tensor& x) {
  RETURN_IF_ERROR(Validate(x));
  return CatchTorch(absl::StrCat("quantizer '", ToSpec(), "'"),
                    [&]() -> at::Tensor { return forward(x); });
}

at::Tensor Quantizer::forward(const at::Tensor& x) {
  static const at::Tensor kOne = at::ones({1});
  return MixForms(x, {Prepare(x)}, kOne);
}

// ---- FracBits ----

FracBitsQuantizer::FracBitsQuantizer(SpecValues values) : Quantizer(std::move(values)) {
  const ParamInfo* p = scheme().FindParam("bits");
  min_bits_ = p->min;
  max_bits_ = p->max;
  // esb needs k <= bits-1 at every integer width it mixes.
  if (scheme().name == "esb") min_bits_ = std::max(min_bits_, double(this->values().Int("k") + 1));
  // A symmetric signed grid starts at 2 bits.
  if (scheme().name == "uniform" && this->values().Bool("symmetric") &&
      this->values().Bool("signed")) {
    min_bits_ = std::max(min_bits_, 2.0);
  }
  if ((scheme().name == "uniform_act" || scheme().name == "lsq_act") &&
      this->values().Bool("signed")) {
    min_bits_ = std::max(min_bits_, 2.0);
  }
}

std::int64_t FracBitsQuantizer::LevelCount() const {
  // Both integer quantizers are monotone in x, so the pair (Q_lo, Q_hi) changes at most
  // L_lo + L_hi - 2 times along the real line.
  const int lo = static_cast<int>(std::floor(bits()));
  auto levels = [&](int b) {
    SpecValues v = values();
    v.Set("bits", FormatNumber(b));
    return MakeInteger(v)->LevelCount();
  };
  return levels(lo) + levels(std::min<int>(lo + 1, max_bits_)) - 1;
}

Quantizer& FracBitsQuantizer::AtBits(int b) {
  auto it = by_bits_.find(b);
  if (it == by_bits_.end()) {
    SpecValues v = values();
    v.Set("bits", FormatNumber(b));
    auto q = MakeInteger(v);
    register_module(absl::StrCat("b", b), q);
    if (!is_training()) q->eval();
    it = by_bits_.emplace(b, std::move(q)).first;
  }
  return *it->second;
}

void FracBitsQuantizer::Prebuild(double lo, double hi) {
  lo = std::clamp(lo, min_bits_, max_bits_);
  hi = std::clamp(hi, min_bits_, max_bits_);
  const int last = std::min(static_cast<int>(std::floor(hi)) + 1, static_cast<int>(max_bits_));
  for (int b = static_cast<int>(std::floor(lo)); b <= last; ++b) AtBits(b);
}

at::Tensor FracBitsQuantizer::forward(const at::Tensor& x) {
  return Forward(x, at::full({}, bits()));
}

at::Tensor FracBitsQuantizer::Forward(const at::Tensor& x, const at::Tensor& bits) {
  at::Tensor b = bits.reshape({}).clamp(min_bits_, max_bits_);
  const double value = b.item<double>();
  const int lo = static_cast<int>(std::floor(value));
  at::Tensor frac = b - static_cast<double>(lo);
  if (lo + 1 > max_bits_) return AtBits(lo).forward(x);
  at::Tensor pi = at::stack({1 - frac, frac});
  RowStatsScope shared_stats;
  return MixForms(x, {AtBits(lo).Prepare(x), AtBits(lo + 1).Prepare(x)}, pi);
}

PointForm FracBitsQuantizer::Prepare(const at::Tensor&) {
  TORCH_CHECK(false, "FracBits quantizers mix two forms; call forward() instead of Prepare()");
}

// ---- factory ----

absl::StatusOr<std::shared_ptr<Quantizer>> MakeQuantizer(absl::string_view spec) {
  ASSIGN_OR_RETURN(SpecValues v, ParseSpec(spec));
  const double b = v.Real("bits");
  if (b != std::floor(b)) return std::shared_ptr<Quantizer>(std::make_shared<FracBitsQuantizer>(v));
  return MakeInteger(std::move(v));
}

// Exposed to calibration.cc without widening the public header.
void SetActivationRange(Quantizer& q, double lo, double hi) {
  static_cast<UniformActQuantizer&>(q).SetRange(lo, hi);
}
double ActivationRange(const Quantizer& q) {
  return static_cast<const UniformActQuantizer&>(q).range();
}

}  // namespace qsearch::quantizers
