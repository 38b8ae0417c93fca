// Plain ATen implementations of every PointKind's level function, written the way a
// Python quantizer composes them: one tensor op per step, straight-through rounding by
// `r.detach() + (v - v.detach())`-style tricks, autograd for the rest.
//
// Two uses: tests check the fused kernel against this independent implementation, and
// the composite benchmark uses it as the unfused baseline (K op chains plus K-1 adds).
#ifndef QSEARCH_QUANTIZERS_TESTING_REFERENCE_OPS_H_
#define QSEARCH_QUANTIZERS_TESTING_REFERENCE_OPS_H_

#include <ATen/core/Tensor.h>

#include "quantizers/point_kernel.h"

namespace qsearch::quantizers::testing {

// Q(x) for one prepared form, differentiable with respect to x (and to form.learned for
// LSQ and PACT). The learned tensor's LSQ gradient scale is applied as in the paper.
at::Tensor ReferenceQuantize(const PointForm& form, const at::Tensor& x);

}  // namespace qsearch::quantizers::testing

#endif  // QSEARCH_QUANTIZERS_TESTING_REFERENCE_OPS_H_
