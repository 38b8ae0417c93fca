// The cost model of a mixed-precision policy and budgets. No LibTorch here: arithmetic
// over the layer table (a template, so QPL's tensors use the same formulas), exact and
// cheap to property-test.
//
// Costs cover the quantized layers (excluded layers stay float and are not counted):
//   size    = sum_l params_l * w_l                      (bits)
//   avg     = size / sum_l params_l
//   bitops  = sum_l macs_l * w_l * a_l                  (per sample)
//   act mem = sum_l act_l * a_l, or max_l when peak      (bits per sample)
#ifndef QSEARCH_SEARCH_COST_H_
#define QSEARCH_SEARCH_COST_H_

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

// A policy's cost in each budget dimension, for any number type: double for reports and
// repair, a scalar tensor for QPL's differentiable penalty.
template <typename T>
struct Costs {
  T size_bits{}, avg_bits{}, bitops{}, act_mem_bits{};
};
using CostTotals = Costs<double>;

// The cost model, one definition for every use: `zero` starts each sum and `max` takes
// the peak of activation memory (std::max for doubles, at::maximum for tensors), so the
// penalty QPL trains against is the cost a policy is judged by.
template <typename T, typename Max>
Costs<T> CostOf(const std::vector<LayerCost>& layers, const std::vector<T>& w_bits, const std::vector<T>& a_bits,
                bool act_peak, const T& zero, Max max) {
  Costs<T> c{zero, zero, zero, zero};
  double params = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerCost& layer = layers[l];
    c.size_bits = c.size_bits + static_cast<double>(layer.params) * w_bits[l];
    params += static_cast<double>(layer.params);
    c.bitops = c.bitops + static_cast<double>(layer.macs) * w_bits[l] * a_bits[l];
    const T mem = static_cast<double>(layer.act_elems) * a_bits[l];
    c.act_mem_bits = act_peak ? max(c.act_mem_bits, mem) : c.act_mem_bits + mem;
  }
  if (params > 0) c.avg_bits = c.size_bits / params;
  return c;
}

CostTotals ComputeCost(const std::vector<LayerCost>& layers, const std::vector<double>& w_bits,
                       const std::vector<double>& a_bits, bool act_peak);

// A limited budget dimension: its name, where a Costs holds it, and the limit.
struct BudgetDim {
  const char* name;
  double CostTotals::*field;
  double limit;
};
// The budget's limited (non-zero) dimensions, in the order size, average bits, BitOPs,
// activation memory.
std::vector<BudgetDim> LimitedDims(const v1::Budget& budget);
// Relative tolerance of every budget comparison (floating-point sums of many layers).
inline constexpr double kBudgetTolerance = 1e-9;
// True when `cost` is within every limit of `dims`.
bool WithinDims(const CostTotals& cost, const std::vector<BudgetDim>& dims);

// Sum over the budget's limited dimensions of distance(cost / limit - 1): QPL's penalty
// (distance = |r| for "l1", max(r, 0) for "hinge"), in the order of LimitedDims.
template <typename T, typename Distance>
T BudgetPenalty(const Costs<T>& cost, const v1::Budget& b, const T& zero, Distance distance) {
  T total = zero;
  const auto term = [&](const T& value, double limit) {
    if (limit > 0) total = total + distance(value / limit - 1);
  };
  term(cost.size_bits, b.model_size_bits());
  term(cost.avg_bits, b.average_weight_bits());
  term(cost.bitops, b.bitops());
  term(cost.act_mem_bits, b.activation_memory_bits());
  return total;
}

// True when every limited dimension (non-zero in the budget) holds.
bool WithinBudget(const CostTotals& cost, const v1::Budget& budget);
// budget - cost for limited dimensions, 0 for unlimited ones.
CostTotals Slack(const CostTotals& cost, const v1::Budget& budget);
v1::PolicyCost ToProto(const CostTotals& c);
// InvalidArgument for negative or non-finite limits, or a budget with no limit at all.
absl::Status ValidateBudget(const v1::Budget& budget);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_COST_H_
