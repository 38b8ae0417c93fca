// The cost model and budgets.
#include "search/cost.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace qsearch::search {
bool WithinDims(const CostTotals& c, const std::vector<BudgetDim>& dims) {
  for (const BudgetDim& d : dims) {
    if (c.*d.field > d.limit * (1 + kBudgetTolerance)) return false;
  }
  return true;
}

std::vector<BudgetDim> LimitedDims(const v1::Budget& b) {
  std::vector<BudgetDim> dims;
  if (b.model_size_bits() > 0) dims.push_back({"model size (bits)", &CostTotals::size_bits, b.model_size_bits()});
  if (b.average_weight_bits() > 0) dims.push_back({"average weight bits", &CostTotals::avg_bits, b.average_weight_bits()});
  if (b.bitops() > 0) dims.push_back({"BitOPs", &CostTotals::bitops, b.bitops()});
  if (b.activation_memory_bits() > 0) {
    dims.push_back({"activation memory (bits)", &CostTotals::act_mem_bits, b.activation_memory_bits()});
  }
  return dims;
}

CostTotals ComputeCost(const std::vector<LayerCost>& layers, const std::vector<double>& w_bits,
                       const std::vector<double>& a_bits, bool act_peak) {
  return CostOf<double>(layers, w_bits, a_bits, act_peak, 0.0, [](double a, double b) { return std::max(a, b); });
}

bool WithinBudget(const CostTotals& cost, const v1::Budget& budget) {
  return WithinDims(cost, LimitedDims(budget));
}

CostTotals Slack(const CostTotals& cost, const v1::Budget& budget) {
  CostTotals s;
  for (const BudgetDim& d : LimitedDims(budget)) s.*d.field = d.limit - cost.*d.field;
  return s;
}

v1::PolicyCost ToProto(const CostTotals& c) {
  v1::PolicyCost p;
  p.set_model_size_bits(c.size_bits);
  p.set_average_weight_bits(c.avg_bits);
  p.set_bitops(c.bitops);
  p.set_activation_memory_bits(c.act_mem_bits);
  return p;
}

absl::Status ValidateBudget(const v1::Budget& b) {
  for (double v : {b.model_size_bits(), b.average_weight_bits(), b.bitops(), b.activation_memory_bits()}) {
    if (!std::isfinite(v) || v < 0) {
      return absl::InvalidArgumentError("budget limits must be finite and non-negative");
    }
  }
  if (LimitedDims(b).empty()) {
    return absl::InvalidArgumentError(
        "the budget sets no limit: give model_size_bits, average_weight_bits, bitops or "
        "activation_memory_bits");
  }
  return absl::OkStatus();
}

}  // namespace qsearch::search
