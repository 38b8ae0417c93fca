// Rounding and repair: QPL's real widths become integers that meet the hard budget. Each
// layer may round down or up; the exact solver (allocation.h) picks the rounding with the
// least error under the sensitivity model (sensitivity.h) that fits, or, when none does,
// the best allocation over all allowed widths. RepairToBudget, the greedy repair, is the
// fallback when the solver gives up. The result ALWAYS satisfies the budget
// (InvalidArgument, saying by how much, when even the lowest widths do not), and the
// policy says by how much (slack).
#ifndef QSEARCH_SEARCH_REPAIR_H_
#define QSEARCH_SEARCH_REPAIR_H_

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/v1/quantization.pb.h"
#include "search/cost.h"
#include "search/job_context.h"

namespace qsearch::search {

struct RepairProblem {
  std::vector<LayerCost> layers;
  // Allowed integer widths per layer, ascending (a single value pins the width).
  std::vector<std::vector<int>> w_allowed, a_allowed;
  // Starting point (rounded QPL widths); each must be one of the allowed values.
  std::vector<int> w_bits, a_bits;
  // Quantization error of layer l at a width; lower widths should not give less error.
  std::function<double(int layer, int bits)> w_error, a_error;
  v1::Budget budget;
};

struct RepairResult {
  std::vector<int> w_bits, a_bits;
  CostTotals cost;
  int lowered = 0;  // single-width steps down taken to meet the budget
  int raised = 0;   // steps up taken to spend leftover slack
};

// Greedy: lowers the widths whose error grows least per unit of cost saved until the budget
// holds, then raises the widths whose error falls most per unit of cost while it still
// holds. Pure arithmetic over the layer table.
absl::StatusOr<RepairResult> RepairToBudget(const RepairProblem& problem);

// Rounds the layers' QPL widths exactly as above (the Fisher goes to job.sensitivity),
// fixes the policy in the model (job.w_chosen / a_chosen) and reports it.
absl::StatusOr<v1::Policy> RoundAndRepair(JobContext& job);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_REPAIR_H_
