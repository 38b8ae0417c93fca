// Pareto-frontier dynamic programming for the multiple-choice knapsack.
#include "search/allocation.h"

#include <algorithm>
#include <array>
#include <iterator>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace qsearch::search {
namespace {

// A partial choice: the costs of the layers so far in each constrained dimension, its
// error, and how it was reached (for the backtrack).
struct State {
  double cost[3];  // model size (bits), BitOPs, activation memory (sum, or running peak)
  double error;
  int parent;  // index in the previous layer's frontier
  int option;  // option chosen for this layer
};

struct Limits {
  bool on[3] = {false, false, false};
  double limit[3] = {0, 0, 0};
  bool peak = false;
};

Limits LimitsOf(const AllocationProblem& p) {
  Limits l;
  const v1::Budget& b = p.budget;
  double params = 0;
  for (const auto& layer : p.layers) params += static_cast<double>(layer.params);
  // Average bits is a size limit over the quantized parameters.
  double size = std::numeric_limits<double>::infinity();
  if (b.model_size_bits() > 0) size = b.model_size_bits();
  if (b.average_weight_bits() > 0) size = std::min(size, b.average_weight_bits() * params);
  const double limits[3] = {size, b.bitops() > 0 ? b.bitops() : std::numeric_limits<double>::infinity(),
                            b.activation_memory_bits() > 0 ? b.activation_memory_bits()
                                                           : std::numeric_limits<double>::infinity()};
  for (int d = 0; d < 3; ++d) {
    l.on[d] = limits[d] < std::numeric_limits<double>::infinity();
    l.limit[d] = limits[d] * (1 + kBudgetTolerance);
  }
  l.peak = b.activation_memory_peak();
  return l;
}

void OptionCosts(const LayerCost& layer, const AllocationOption& o, double out[3]) {
  out[0] = static_cast<double>(layer.params) * o.w_bits;
  out[1] = static_cast<double>(layer.macs) * o.w_bits * o.a_bits;
  out[2] = static_cast<double>(layer.act_elems) * o.a_bits;
}

// Keeps the states no other state beats: lower or equal error and costs in every
// constrained dimension. Sorting by error first means each state is only checked against
// those already kept, which all have less error.
std::vector<State> Prune(std::vector<State> states, const Limits& lim) {
  std::sort(states.begin(), states.end(), [](const State& a, const State& b) {
    if (a.error != b.error) return a.error < b.error;
    return std::lexicographical_compare(std::begin(a.cost), std::end(a.cost), std::begin(b.cost), std::end(b.cost));
  });
  std::vector<int> dims;
  for (int d = 0; d < 3; ++d) {
    if (lim.on[d]) dims.push_back(d);
  }
  std::vector<State> kept;
  if (dims.empty()) {
    if (!states.empty()) kept.push_back(states.front());
    return kept;
  }
  if (dims.size() == 1) {
    const int d = dims[0];
    double best = std::numeric_limits<double>::infinity();
    for (const State& s : states) {
      if (s.cost[d] < best) {
        best = s.cost[d];
        kept.push_back(s);
      }
    }
    return kept;
  }
  if (dims.size() == 2) {
    // The cost points of kept states as a staircase: second cost falling as the first
    // rises. A state is beaten when a point to its lower left exists.
    const int a = dims[0], b = dims[1];
    std::map<double, double> stairs;
    for (const State& s : states) {
      auto it = stairs.upper_bound(s.cost[a]);
      if (it != stairs.begin() && std::prev(it)->second <= s.cost[b]) continue;
      kept.push_back(s);
      // Points this one beats are no longer needed for the check.
      for (auto j = stairs.lower_bound(s.cost[a]); j != stairs.end() && j->second >= s.cost[b];) j = stairs.erase(j);
      stairs[s.cost[a]] = s.cost[b];
    }
    return kept;
  }
  for (const State& s : states) {
    const bool beaten = std::any_of(kept.begin(), kept.end(), [&](const State& k) {
      return k.cost[0] <= s.cost[0] && k.cost[1] <= s.cost[1] && k.cost[2] <= s.cost[2];
    });
    if (!beaten) kept.push_back(s);
  }
  return kept;
}

}  // namespace

absl::StatusOr<Allocation> SolveAllocation(const AllocationProblem& p) {
  const size_t n = p.layers.size();
  if (p.options.size() != n) return absl::InvalidArgumentError("allocation: one option list per layer");
  for (size_t l = 0; l < n; ++l) {
    if (p.options[l].empty()) return absl::InvalidArgumentError(absl::StrCat("allocation: layer ", l, " has no option"));
  }
  const Limits lim = LimitsOf(p);
  // The least each dimension can still grow after layer l (for dropping choices that can
  // no longer fit), and the least error still to come (against the best known solution).
  std::vector<std::array<double, 3>> rest(n + 1, {0, 0, 0});
  for (size_t l = n; l-- > 0;) {
    std::array<double, 3> least = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(),
                                   std::numeric_limits<double>::infinity()};
    for (const auto& o : p.options[l]) {
      double c[3];
      OptionCosts(p.layers[l], o, c);
      for (int d = 0; d < 3; ++d) least[d] = std::min(least[d], c[d]);
    }
    for (int d = 0; d < 3; ++d) {
      rest[l][d] = (d == 2 && lim.peak) ? std::max(rest[l + 1][d], least[d]) : rest[l + 1][d] + least[d];
    }
  }
  for (int d = 0; d < 3; ++d) {
    if (lim.on[d] && rest[0][d] > lim.limit[d]) {
      static const char* kNames[] = {"model size (bits)", "BitOPs", "activation memory (bits)"};
      return absl::InvalidArgumentError(absl::StrFormat(
          "infeasible budget: %s is %.6g at the lowest allowed bit widths, above the limit %.6g", kNames[d],
          rest[0][d], lim.limit[d] / (1 + kBudgetTolerance)));
    }
  }

  std::vector<std::vector<State>> frontiers;
  frontiers.reserve(n);
  std::vector<State> frontier = {State{{0, 0, 0}, 0, -1, -1}};
  Allocation out;
  for (size_t l = 0; l < n; ++l) {
    std::vector<State> next;
    next.reserve(frontier.size() * p.options[l].size());
    for (size_t i = 0; i < frontier.size(); ++i) {
      for (size_t k = 0; k < p.options[l].size(); ++k) {
        double c[3];
        OptionCosts(p.layers[l], p.options[l][k], c);
        State s = frontier[i];
        for (int d = 0; d < 3; ++d) s.cost[d] = (d == 2 && lim.peak) ? std::max(s.cost[d], c[d]) : s.cost[d] + c[d];
        bool fits = true;
        for (int d = 0; d < 3 && fits; ++d) {
          const double at_least = (d == 2 && lim.peak) ? std::max(s.cost[d], rest[l + 1][d]) : s.cost[d] + rest[l + 1][d];
          fits = !lim.on[d] || at_least <= lim.limit[d];
        }
        if (!fits) continue;
        s.error += p.options[l][k].error;
        s.parent = static_cast<int>(i);
        s.option = static_cast<int>(k);
        next.push_back(s);
      }
    }
    frontier = Prune(std::move(next), lim);
    if (frontier.empty()) {
      return absl::InvalidArgumentError(
          "infeasible budget: no choice of bit widths meets every limited dimension at once");
    }
    out.largest_frontier = std::max(out.largest_frontier, frontier.size());
    if (frontier.size() > p.max_states) {
      return absl::ResourceExhaustedError(absl::StrCat("allocation: ", frontier.size(), " partial choices after layer ",
                                                       l, ", more than ", p.max_states));
    }
    frontiers.push_back(frontier);
  }
  // Every surviving choice fits (each step checked what was still to come).
  const State* best = &frontier.front();
  for (const State& s : frontier) {
    if (s.error < best->error) best = &s;
  }
  out.error = best->error;
  out.choice.assign(n, 0);
  int at = static_cast<int>(best - frontier.data());
  for (size_t l = n; l-- > 0;) {
    const State& s = frontiers[l][at];
    out.choice[l] = s.option;
    at = s.parent;
  }
  std::vector<double> w(n), a(n);
  for (size_t l = 0; l < n; ++l) {
    w[l] = p.options[l][out.choice[l]].w_bits;
    a[l] = p.options[l][out.choice[l]].a_bits;
  }
  out.cost = ComputeCost(p.layers, w, a, p.budget.activation_memory_peak());
  return out;
}

}  // namespace qsearch::search
