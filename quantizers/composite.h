// Fused mixture of quantizers for Quantization Scheme Search: sum_i pi_i * Q_i(x) in one
// pass over x, with gradients to x, to pi and to each candidate's learned parameter.
// Backward recomputes Q_i(x) element by element instead of storing K quantized copies.
#ifndef QSEARCH_QUANTIZERS_COMPOSITE_H_
#define QSEARCH_QUANTIZERS_COMPOSITE_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "quantizers/point_kernel.h"
#include "quantizers/quantizer.h"

namespace qsearch::quantizers {

// Differentiable sum_i pi[i] * form_i(x). pi: 1-D, forms.size() entries, may require grad.
// x: float32 (made contiguous here). Unchecked: callers validate.
at::Tensor MixForms(const at::Tensor& x, std::vector<PointForm> forms, const at::Tensor& pi);

// Checked entry point: candidates must be integer-bit quantizers (not FracBits), pi
// finite with one entry per candidate, x valid for every candidate.
absl::StatusOr<at::Tensor> CompositeQuantize(
    const at::Tensor& x, const std::vector<std::shared_ptr<Quantizer>>& candidates,
    const at::Tensor& pi);

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_COMPOSITE_H_
