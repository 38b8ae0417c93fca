// Quantizing Precision Learning: per layer a real bit width b = lo + (hi - lo) *
// sigmoid(s) for the scheme QSS chose (FracBits interpolation between integer widths),
// trained with the weights on cross-entropy + lambda * the budget penalty (L1 or hinge on
// each limited dimension of cost.h's model, relative to its limit). Rounding and repair
// follow (repair.h).
#ifndef QSEARCH_SEARCH_QPL_H_
#define QSEARCH_SEARCH_QPL_H_

#include "absl/status/status.h"
#include "search/job_context.h"

namespace qsearch::search {

absl::Status RunQpl(JobContext& job);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_QPL_H_
