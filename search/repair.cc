// BudgetRepair and the rounding that feeds it.
#include "search/repair.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "quantizers/quantizer.h"
#include "search/bit_widths.h"
#include "search/policy.h"
#include "search/qpl.h"
#include "search/sensitivity.h"

namespace qsearch::search {
namespace {

// How much of the violated budget a change removes (positive = saves), each dimension
// measured relative to its limit.
double Saving(const CostTotals& before, const CostTotals& after, const std::vector<BudgetDim>& dims,
              bool violated_only) {
  double s = 0;
  for (const BudgetDim& d : dims) {
    if (violated_only && before.*d.field <= d.limit * (1 + kBudgetTolerance)) continue;
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

absl::StatusOr<RepairResult> RepairToBudget(const RepairProblem& p) {
  const size_t n = p.layers.size();
  if (p.w_allowed.size() != n || p.a_allowed.size() != n || p.w_bits.size() != n ||
      p.a_bits.size() != n) {
    return absl::InvalidArgumentError("repair: per-layer tables differ in length");
  }
  const std::vector<BudgetDim> dims = LimitedDims(p.budget);
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
  for (const BudgetDim& d : dims) {
    if (floor_cost.*d.field > d.limit * (1 + kBudgetTolerance)) {
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
  while (!WithinDims(cost, dims)) {
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
    if (!WithinDims(after, dims) || error_change >= 0) return kReject;
    const double spend = std::max(-Saving(cost, after, dims, /*violated_only=*/false), 1e-12);
    return -error_change / spend;
  })) {
    ++r.raised;
  }
  r.cost = cost;
  return r;
}

namespace {

// Greedy repair of the rounded widths: the fallback when the exact solver gives up.
absl::StatusOr<RepairResult> GreedyRepair(JobContext& job, const std::vector<size_t>& index,
                                          const std::vector<int>& w_start, const std::vector<int>& a_start,
                                          const std::vector<double>& fisher) {
  RepairProblem rp;
  rp.layers = job.selection.costs;
  rp.budget = job.spec.budget();
  rp.w_bits = w_start;
  rp.a_bits = a_start;
  std::vector<std::map<int, double>> w_err;
  torch::NoGradGuard ng;
  for (size_t l : index) {
    rp.w_allowed.push_back(WeightWidths(job.w_chosen[l], job.spec.qpl()));
    rp.a_allowed.push_back(ActWidths(job.a_chosen[l], job.spec.qpl()));
    std::map<int, double> errs;
    const at::Tensor w = job.layers[l].second->weight().detach();
    for (int b : rp.w_allowed.back()) {
      auto qz = quantizers::MakeQuantizer(AtBits(job.w_chosen[l], b));
      if (qz.ok()) errs[b] = fisher[l] * (w - (*qz)->forward(w)).pow(2).sum().item<double>();
    }
    w_err.push_back(std::move(errs));
  }
  rp.w_error = [&](int l, int b) { return w_err[l].count(b) ? w_err[l][b] : 0.0; };
  rp.a_error = [&](int l, int b) {
    return static_cast<double>(job.selection.costs[l].act_elems) * std::ldexp(1.0, -2 * b);
  };
  return RepairToBudget(rp);
}

}  // namespace

absl::StatusOr<v1::Policy> RoundAndRepair(JobContext& job) {
  job.w_chosen = job.qss_w;
  job.a_chosen = job.qss_a;
  const size_t n = job.layers.size();
  // Rounding: each width may go to the integer below its learned real value or any width
  // above it (QPL's L1 penalty often ends under the budget: the solver spends the slack).
  WidthLimits rounding;
  rounding.weight.resize(n);
  rounding.act.resize(n);
  std::vector<size_t> index;  // quantized layer -> job.layers index
  std::vector<int> w_near, a_near;
  for (size_t l = 0; l < n; ++l) {
    if (job.selection.excluded[l]) continue;
    index.push_back(l);
    auto& layer = job.layers[l].second;
    const auto around = [](const std::vector<int>& ok, double b, std::vector<int>* near) {
      for (int v : ok) {
        if (v >= std::floor(b) - 1e-9) near->push_back(v);
      }
      int nearest = ok.front();
      for (int v : ok) if (std::fabs(v - b) < std::fabs(nearest - b)) nearest = v;
      if (near->empty()) near->push_back(nearest);
      return nearest;
    };
    w_near.push_back(around(WeightWidths(job.w_chosen[l], job.spec.qpl()), layer->WeightBits().item<double>(),
                            &rounding.weight[l]));
    a_near.push_back(around(ActWidths(job.a_chosen[l], job.spec.qpl()), layer->ActBits().item<double>(),
                            &rounding.act[l]));
  }
  // Without QPL epochs and with the sensitivity init, nothing was learned to round: the
  // widths are the exact allocation over every width of the chosen schemes, with the
  // sensitivities QSS's last batches measured (qss.cc); otherwise (or with no QSS epochs) a
  // Fisher pass measures them on the model as it is now.
  const bool allocate_all = AllocatesWithoutQpl(job.spec);
  if (!allocate_all || job.sensitivity.size() != n) {
    ASSIGN_OR_RETURN(job.sensitivity, WeightFisher(*job.model, job.layers, job.data.train, job.spec.batch_size(),
                                                   kFisherSamples));
  }
  std::vector<std::vector<std::string>> schemes(n);
  for (size_t l = 0; l < n; ++l) schemes[l] = {job.w_chosen[l]};
  // Exact: the best rounding under the sensitivity model; when no rounding fits, the best
  // of all allowed widths; greedy repair only if the solver gives up.
  std::string how = allocate_all ? "allocated exactly over the chosen schemes" : "rounded exactly";
  absl::StatusOr<SensitivityAllocation> exact =
      allocate_all ? Allocate(job, *job.model, job.sensitivity, schemes, job.a_chosen)
                   : Allocate(job, *job.model, job.sensitivity, schemes, job.a_chosen, rounding);
  if (!allocate_all && absl::IsInvalidArgument(exact.status())) {
    how = "no rounding fits: allocated exactly over all widths";
    exact = Allocate(job, *job.model, job.sensitivity, schemes, job.a_chosen);
  }
  if (exact.ok()) {
    for (size_t l : index) {
      job.w_chosen[l] = exact->choices[l].weight_spec;
      job.a_chosen[l] = exact->choices[l].act_spec;
    }
  } else if (absl::IsResourceExhausted(exact.status())) {
    ASSIGN_OR_RETURN(RepairResult r, GreedyRepair(job, index, w_near, a_near, job.sensitivity));
    for (size_t i = 0; i < index.size(); ++i) {
      job.w_chosen[index[i]] = AtBits(job.w_chosen[index[i]], r.w_bits[i]);
      job.a_chosen[index[i]] = AtBits(job.a_chosen[index[i]], r.a_bits[i]);
    }
    how = absl::StrFormat("greedy repair (%s): %d steps down, %d up", exact.status().message(), r.lowered, r.raised);
  } else {
    return exact.status();
  }
  for (size_t l : index) RETURN_IF_ERROR(job.layers[l].second->SetFixed(job.w_chosen[l], job.a_chosen[l]));
  job.model->DropArchitectureParams();
  v1::Policy p = CurrentPolicy(job);
  job.progress.Emit({v1::PHASE_QPL, job.spec.qpl().epochs(), 0, 0, how, &p});
  return p;
}

}  // namespace qsearch::search
