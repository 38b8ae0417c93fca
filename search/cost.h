// The cost model of a mixed-precision policy and BudgetRepair, which turns rounded bit
// widths into ones that meet a hard budget. No LibTorch here: pure arithmetic over the
// layer table, so it is exact and cheap to property-test.
//
// Costs cover the quantized layers (excluded layers stay float and are not counted):
//   size    = sum_l params_l * w_l                      (bits)
//   avg     = size / sum_l params_l
//   bitops  = sum_l macs_l * w_l * a_l                  (per sample)
//   act mem = sum_l act_l * a_l, or max_l when peak      (bits per sample)
#ifndef QSEARCH_SEARCH_COST_H_
#define QSEARCH_SEARCH_COST_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/v1/quantization.pb.h"

namespace qsearch::search {

struct LayerCost {
  std::string name;
  std::int64_t params = 0;
  std::int64_t macs = 0;
  std::int64_t act_elems = 0;
};

struct CostTotals {
  double size_bits = 0, avg_bits = 0, bitops = 0, act_mem_bits = 0;
};

CostTotals ComputeCost(const std::vector<LayerCost>& layers, const std::vector<double>& w_bits,
                       const std::vector<double>& a_bits, bool act_peak);

// True when every limited dimension (non-zero in the budget) holds.
bool WithinBudget(const CostTotals& cost, const v1::Budget& budget);
// budget - cost for limited dimensions, 0 for unlimited ones.
CostTotals Slack(const CostTotals& cost, const v1::Budget& budget);
v1::PolicyCost ToProto(const CostTotals& c);
// InvalidArgument for negative or non-finite limits, or a budget with no limit at all.
absl::Status ValidateBudget(const v1::Budget& budget);

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

// Lowers the widths whose error grows least per unit of cost saved until the budget
// holds, then raises the widths whose error falls most per unit of cost while it still
// holds. The result ALWAYS satisfies the budget; InvalidArgument (saying by how much)
// when even the lowest allowed widths do not.
absl::StatusOr<RepairResult> RepairToBudget(const RepairProblem& problem);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_COST_H_
