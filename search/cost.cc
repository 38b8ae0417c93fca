// Cost model and greedy budget repair.
#include "search/cost.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace qsearch::search {
namespace {

constexpr double kTolerance = 1e-9;

struct Dim {
  const char* name;
  double CostTotals::*field;
  double limit;
};

std::vector<Dim> LimitedDims(const v1::Budget& b) {
  std::vector<Dim> dims;
  if (b.model_size_bits() > 0) dims.push_back({"model size (bits)", &CostTotals::size_bits, b.model_size_bits()});
  if (b.average_weight_bits() > 0) dims.push_back({"average weight bits", &CostTotals::avg_bits, b.average_weight_bits()});
  if (b.bitops() > 0) dims.push_back({"BitOPs", &CostTotals::bitops, b.bitops()});
  if (b.activation_memory_bits() > 0) {
    dims.push_back({"activation memory (bits)", &CostTotals::act_mem_bits, b.activation_memory_bits()});
  }
  return dims;
}

bool Holds(const CostTotals& c, const std::vector<Dim>& dims) {
  for (const Dim& d : dims) {
    if (c.*d.field > d.limit * (1 + kTolerance)) return false;
  }
  return true;
}

// How much of the violated budget a change removes (positive = saves), each dimension
// measured relative to its limit.
double Saving(const CostTotals& before, const CostTotals& after, const std::vector<Dim>& dims,
              bool violated_only) {
  double s = 0;
  for (const Dim& d : dims) {
    if (violated_only && before.*d.field <= d.limit * (1 + kTolerance)) continue;
    s += (before.*d.field - after.*d.field) / d.limit;
  }
  return s;
}

int Step(const std::vector<int>& allowed, int bits, int direction) {
  auto it = std::find(allowed.begin(), allowed.end(), bits);
  if (it == allowed.end()) return -1;
  if (direction < 0) return it == allowed.begin() ? -1 : *(it - 1);
  return (it + 1) == allowed.end() ? -1 : *(it + 1);
}

}  // namespace

CostTotals ComputeCost(const std::vector<LayerCost>& layers, const std::vector<double>& w_bits,
                       const std::vector<double>& a_bits, bool act_peak) {
  CostTotals c;
  double params = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerCost& L = layers[l];
    c.size_bits += static_cast<double>(L.params) * w_bits[l];
    params += static_cast<double>(L.params);
    c.bitops += static_cast<double>(L.macs) * w_bits[l] * a_bits[l];
    const double mem = static_cast<double>(L.act_elems) * a_bits[l];
    c.act_mem_bits = act_peak ? std::max(c.act_mem_bits, mem) : c.act_mem_bits + mem;
  }
  c.avg_bits = params > 0 ? c.size_bits / params : 0;
  return c;
}

bool WithinBudget(const CostTotals& cost, const v1::Budget& budget) {
  return Holds(cost, LimitedDims(budget));
}

CostTotals Slack(const CostTotals& cost, const v1::Budget& budget) {
  CostTotals s;
  for (const Dim& d : LimitedDims(budget)) s.*d.field = d.limit - cost.*d.field;
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

absl::StatusOr<RepairResult> RepairToBudget(const RepairProblem& p) {
  const size_t n = p.layers.size();
  if (p.w_allowed.size() != n || p.a_allowed.size() != n || p.w_bits.size() != n ||
      p.a_bits.size() != n) {
    return absl::InvalidArgumentError("repair: per-layer tables differ in length");
  }
  const std::vector<Dim> dims = LimitedDims(p.budget);
  const bool peak = p.budget.activation_memory_peak();
  auto cost_of = [&](const std::vector<int>& w, const std::vector<int>& a) {
    return ComputeCost(p.layers, std::vector<double>(w.begin(), w.end()),
                       std::vector<double>(a.begin(), a.end()), peak);
  };

  // Feasibility: the lowest allowed widths everywhere.
  std::vector<int> w_min(n), a_min(n);
  for (size_t l = 0; l < n; ++l) {
    if (p.w_allowed[l].empty() || p.a_allowed[l].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("repair: layer ", l, " allows no width"));
    }
    w_min[l] = p.w_allowed[l].front();
    a_min[l] = p.a_allowed[l].front();
  }
  const CostTotals floor_cost = cost_of(w_min, a_min);
  for (const Dim& d : dims) {
    if (floor_cost.*d.field > d.limit * (1 + kTolerance)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "infeasible budget: %s is %.6g at the lowest allowed bit widths, above the limit "
          "%.6g by %.3g%%", d.name, floor_cost.*d.field, d.limit,
          100.0 * (floor_cost.*d.field / d.limit - 1)));
    }
  }

  RepairResult r{p.w_bits, p.a_bits, {}, 0, 0};
  CostTotals cost = cost_of(r.w_bits, r.a_bits);

  // Tries every single-width step in `direction` (weights and activations of every layer)
  // and applies the one `score(error change, cost after)` rates highest; a score of -inf
  // rejects a move. Returns false when no move is acceptable.
  constexpr double kReject = -std::numeric_limits<double>::infinity();
  auto apply_best = [&](int direction, const auto& score) {
    double best = kReject;
    int best_layer = -1, best_bits = 0;
    bool best_weight = true;
    for (size_t l = 0; l < n; ++l) {
      for (bool weight : {true, false}) {
        std::vector<int>& bits = weight ? r.w_bits : r.a_bits;
        const int next = Step(weight ? p.w_allowed[l] : p.a_allowed[l], bits[l], direction);
        if (next < 0) continue;
        const int old = bits[l];
        bits[l] = next;
        const CostTotals after = cost_of(r.w_bits, r.a_bits);
        bits[l] = old;
        const auto& err = weight ? p.w_error : p.a_error;
        const int li = static_cast<int>(l);
        const double s = score(err(li, next) - err(li, old), after);
        if (s > best) {
          best = s;
          best_layer = li;
          best_weight = weight;
          best_bits = next;
        }
      }
    }
    if (best_layer < 0) return false;
    (best_weight ? r.w_bits : r.a_bits)[best_layer] = best_bits;
    cost = cost_of(r.w_bits, r.a_bits);
    return true;
  };

  // Lower the width whose error grows least per unit of violated budget it frees. Each
  // step moves one width down one allowed value, so the loop is bounded.
  while (!Holds(cost, dims)) {
    const bool moved = apply_best(-1, [&](double error_change, const CostTotals& after) {
      const double saving = Saving(cost, after, dims, /*violated_only=*/true);
      if (saving <= 0) return kReject;
      return -std::max(0.0, error_change) / saving;
    });
    if (!moved) return absl::InternalError("repair: no width change reduces the violated budget");
    ++r.lowered;
  }

  // Spend leftover slack where it buys the most error reduction per unit of budget.
  while (apply_best(+1, [&](double error_change, const CostTotals& after) {
    if (!Holds(after, dims) || error_change >= 0) return kReject;
    const double spend = std::max(-Saving(cost, after, dims, /*violated_only=*/false), 1e-12);
    return -error_change / spend;
  })) {
    ++r.raised;
  }
  r.cost = cost;
  return r;
}

}  // namespace qsearch::search
