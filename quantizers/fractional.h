// FracBits: a quantizer at a real bit width b, interpolating the integer quantizers below
// and above it, Q_b(x) = (1 + floor(b) - b) * Q_floor(b)(x) + (b - floor(b)) * Q_floor(b)+1(x),
// so the output (and a loss on it) has a derivative with respect to b. Quantizing
// Precision Learning drives b with its own tensor through Forward(x, bits).
#ifndef QSEARCH_QUANTIZERS_FRACTIONAL_H_
#define QSEARCH_QUANTIZERS_FRACTIONAL_H_

#include <map>
#include <memory>

#include "quantizers/quantizer.h"

namespace qsearch::quantizers {

class FracBitsQuantizer : public Quantizer {
 public:
  // `values` names the scheme; its `bits` is the default width forward() uses.
  explicit FracBitsQuantizer(SpecValues values);

  std::int64_t LevelCount() const override;
  at::Tensor forward(const at::Tensor& x) override;
  // Quantizes at width `bits` (a scalar tensor that may require grad), clamped to the
  // scheme's bit range.
  at::Tensor Forward(const at::Tensor& x, const at::Tensor& bits);
  // A FracBits output mixes two forms; it is not a single fused-kernel candidate.
  PointForm Prepare(const at::Tensor& x) override;
  // The integer quantizer this one uses at `bits` (created on first use).
  Quantizer& AtBits(int bits);
  // Creates now every integer quantizer Forward can use for bits in [lo, hi], so their
  // learned parameters exist before an optimiser or a checkpoint load looks for them.
  void Prebuild(double lo, double hi);

 private:
  double min_bits_ = 1, max_bits_ = 8;
  std::map<int, std::shared_ptr<Quantizer>> by_bits_;
};

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_FRACTIONAL_H_
