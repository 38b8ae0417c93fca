// The policy as it stands: per layer the scheme and bits of the current mode (QSS's
// argmax, QPL's real widths, or the fixed policy), float layers with the reason, the cost
// against the budget, and the input normalisation. Reported with events and exported.
#ifndef QSEARCH_SEARCH_POLICY_H_
#define QSEARCH_SEARCH_POLICY_H_

#include "qsearch/v1/quantization.pb.h"
#include "search/job_context.h"

namespace qsearch::search {

v1::Policy CurrentPolicy(const JobContext& job);
// The same for another model of the job (a baseline's), with its layers' sensitivities.
v1::Policy PolicyOf(const JobContext& job, const std::vector<NamedLayer>& layers, const std::vector<double>& sensitivity);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_POLICY_H_
