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

// True when the spec learns no widths (no QPL epochs) and starts from the sensitivity
// allocation: the policy's widths are then the exact allocation over QSS's schemes (the
// default pipeline), not a rounding of learned ones.
inline bool AllocatesWithoutQpl(const v1::JobSpec& spec) {
  return spec.qpl().epochs() == 0 && spec.qpl().init() == "sensitivity";
}

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_QPL_H_
