// Quantizer: maps a float tensor to a fake-quantized tensor of the same shape whose values
// lie exactly on the scheme's level grid. Made from a spec string by MakeQuantizer(); the
// spec it was made from prints back with ToSpec().
//
// Gradients: weight schemes pass the gradient straight through (identity; DoReFa also
// differentiates its tanh normalisation); activation schemes clip it outside their range;
// learned parameters (LSQ step, PACT clip) get the gradients their papers define.
// Statistics (max, mean, std, ...) are treated as constants by the gradient.
//
// Thread-safety: a Quantizer is a torch::nn::Module with running state (EMA ranges, lazy
// LSQ initialisation); use one instance per thread of training, as with any module.
#ifndef QSEARCH_QUANTIZERS_QUANTIZER_H_
#define QSEARCH_QUANTIZERS_QUANTIZER_H_

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include <torch/nn/module.h>

#include "absl/status/statusor.h"
#include "quantizers/point_kernel.h"
#include "quantizers/spec.h"

namespace qsearch::quantizers {

class Quantizer : public torch::nn::Module {
 public:
  Quantizer(const Quantizer&) = delete;
  Quantizer& operator=(const Quantizer&) = delete;

  const SchemeInfo& scheme() const { return values_.scheme(); }
  Role role() const { return scheme().role; }
  const SpecValues& values() const { return values_; }
  // Canonical spec: every key, registry order. MakeQuantizer(ToSpec()) rebuilds it.
  virtual std::string ToSpec() const { return values_.ToSpec(); }
  double bits() const { return values_.Real("bits"); }
  bool passthrough() const { return bits() == 32; }

  // Upper bound on distinct output values within one segment (tensor, channel or group).
  virtual std::int64_t LevelCount() const = 0;
  // True when Q(Q(x)) == Q(x) (up to float rounding of the recomputed scale).
  virtual bool Idempotent() const { return false; }

  // Checks that x can be quantized: float32, rank and shape fit the granularity, and
  // every value finite. Errors are InvalidArgument saying what to change.
  absl::Status Validate(const at::Tensor& x) const;
  // The cheap half of Validate: dtype, rank and shape, no pass over the values.
  absl::Status ValidateShape(const at::Tensor& x) const;
  // Validate + forward, with LibTorch errors turned into a Status.
  absl::StatusOr<at::Tensor> Quantize(const at::Tensor& x);

  // Fake-quantizes x. Unchecked hot path: never checks values, so with NaN/Inf inputs the
  // output values are unspecified (statistics turn NaN) though nothing throws; shape
  // errors throw c10::Error. Use Quantize() for untrusted input. Training mode updates running state (EMA ranges, step counters).
  virtual at::Tensor forward(const at::Tensor& x);

  // Reduces x to the per-segment statistics the fused kernel needs (updating running
  // state exactly as forward does). REQUIRES: Validate(x).ok().
  virtual PointForm Prepare(const at::Tensor& x) = 0;

  // Quantizer is abstract; the constructor is public so subclasses can inherit it with
  // `using` and still be made by std::make_shared.
  explicit Quantizer(SpecValues values) : values_(std::move(values)) {}

 protected:
  // Segments for weight schemes: 1 (tensor), dim 0 (channel) or groups inside channels.
  std::int64_t SegmentSize(const at::Tensor& x) const;

 private:
  SpecValues values_;
};

// Builds a quantizer from a spec string. Non-integer bits give a FracBits interpolation
// between the floor and ceiling quantizers. Errors: InvalidArgument naming the scheme and
// key at fault.
absl::StatusOr<std::shared_ptr<Quantizer>> MakeQuantizer(absl::string_view spec);

// InvalidArgument naming `who` when x holds NaN or Inf.
absl::Status CheckFinite(const at::Tensor& x, absl::string_view who);

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_QUANTIZER_H_
