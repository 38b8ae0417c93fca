// Fisher sensitivities, the error model, and the exact allocation built from them.
#include "search/sensitivity.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "quantizers/quantizer.h"
#include "quantizers/torch_status.h"
#include "search/allocation.h"
#include "search/bit_widths.h"
#include "search/policy.h"

namespace qsearch::search {

void AddSquaredGradients(const std::vector<NamedLayer>& layers, std::vector<double>* sums) {
  sums->resize(layers.size(), 0.0);
  for (size_t l = 0; l < layers.size(); ++l) {
    const at::Tensor g = layers[l].second->weight().grad();
    if (g.defined()) (*sums)[l] += g.pow(2).mean().item<double>();
  }
}

absl::StatusOr<std::vector<double>> WeightFisher(QuantModel& model, const std::vector<NamedLayer>& layers,
                                                 const TensorDataset& data, std::int64_t batch_size,
                                                 std::int64_t max_samples) {
  return CatchTorch("measuring layer sensitivities", [&]() -> absl::StatusOr<std::vector<double>> {
    const bool was_training = model.is_training();
    model.eval();  // running statistics, no quantizer range updates: the model stays as it is
    std::vector<double> fisher(layers.size(), 0);
    const std::int64_t n = std::min(data.size(), max_samples);
    int batches = 0;
    const c10::Device device = model.device();
    for (std::int64_t i = 0; i < n; i += batch_size) {
      model.zero_grad();
      const at::Tensor x = data.images.slice(0, i, std::min(n, i + batch_size)).to(device);
      const at::Tensor y = data.labels.slice(0, i, std::min(n, i + batch_size)).to(device);
      torch::cross_entropy_loss(model.forward(x), y).backward();
      AddSquaredGradients(layers, &fisher);
      ++batches;
      Tick();
    }
    model.zero_grad();
    for (double& f : fisher) f /= std::max(1, batches);
    model.train(was_training);
    return fisher;
  });
}

std::string UniformActSpec(const QuantLayer& layer, double bits) {
  return absl::StrCat("uniform_act:bits=", bits, layer.geometry().input_signed ? ",signed=true" : "");
}

absl::StatusOr<SensitivityAllocation> Allocate(JobContext& job, QuantModel& model, const std::vector<double>& fisher,
                                               const std::vector<std::vector<std::string>>& weight_schemes,
                                               const std::vector<std::string>& act_specs,
                                               const WidthLimits& limits) {
  const auto& qpl = job.spec.qpl();
  const auto layers = model.QuantLayers();
  double mean_fisher = 0;
  int counted = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!job.selection.excluded[l]) {
      mean_fisher += fisher[l];
      ++counted;
    }
  }
  mean_fisher /= std::max(1, counted);
  AllocationProblem problem;
  problem.layers = job.selection.costs;
  problem.budget = job.spec.budget();
  std::vector<size_t> index;                   // problem layer -> model layer
  std::vector<std::vector<LayerChoice>> specs;  // per problem layer, per option
  RETURN_IF_ERROR(CatchTorch("estimating quantization errors", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    for (size_t l = 0; l < layers.size(); ++l) {
      if (job.selection.excluded[l]) continue;
      index.push_back(l);
      const at::Tensor w = layers[l].second->weight().detach();
      // The least error each width reaches over the candidate schemes.
      std::map<int, std::pair<double, std::string>> best;
      for (const std::string& scheme : weight_schemes[l]) {
        for (int b : WeightWidths(scheme, qpl)) {
          if (!limits.weight.empty() && !limits.weight[l].empty() &&
              std::find(limits.weight[l].begin(), limits.weight[l].end(), b) == limits.weight[l].end()) {
            continue;
          }
          const std::string spec = AtBits(scheme, b);
          auto q = quantizers::MakeQuantizer(spec);
          if (spec.empty() || !q.ok()) continue;
          const double error = fisher[l] * (w - (*q)->forward(w)).pow(2).sum().item<double>();
          auto it = best.find(b);
          if (it == best.end() || error < it->second.first) best[b] = {error, spec};
        }
      }
      if (best.empty()) return absl::InvalidArgumentError(absl::StrCat("layer ", layers[l].first, ": no usable width"));
      std::vector<AllocationOption> options;
      std::vector<LayerChoice> choices;
      const double act_elems = static_cast<double>(layers[l].second->geometry().act_elems);
      for (int a : ActWidths(act_specs[l], qpl)) {
        if (!limits.act.empty() && !limits.act[l].empty() &&
            std::find(limits.act[l].begin(), limits.act[l].end(), a) == limits.act[l].end()) {
          continue;
        }
        const double act_error = qpl.learn_activation_bits() ? mean_fisher * act_elems * std::ldexp(1.0, -2 * a) : 0;
        for (const auto& [b, entry] : best) {
          options.push_back({b, a, entry.first + act_error});
          choices.push_back({entry.second, AtBits(act_specs[l], a), b, a});
        }
      }
      problem.options.push_back(std::move(options));
      specs.push_back(std::move(choices));
      Tick();
    }
    return absl::OkStatus();
  }));
  ASSIGN_OR_RETURN(Allocation solved, SolveAllocation(problem));
  SensitivityAllocation out;
  out.choices.assign(layers.size(), LayerChoice{});
  out.fisher = fisher;
  for (size_t i = 0; i < index.size(); ++i) out.choices[index[i]] = specs[i][solved.choice[i]];
  out.error = solved.error;
  out.largest_frontier = solved.largest_frontier;
  return out;
}

absl::Status ApplyChoices(const JobContext& job, QuantModel& model, const std::vector<LayerChoice>& choices) {
  const auto layers = model.QuantLayers();
  for (size_t l = 0; l < layers.size(); ++l) {
    if (job.selection.excluded[l]) continue;
    RETURN_IF_ERROR(layers[l].second->SetFixed(choices[l].weight_spec, choices[l].act_spec));
  }
  model.DropArchitectureParams();
  return absl::OkStatus();
}

absl::Status RunAllocation(JobContext& job) {
  const auto& q = job.spec.qss();
  ASSIGN_OR_RETURN(std::vector<double> fisher, WeightFisher(*job.model, job.layers, job.data.train,
                                                            job.spec.batch_size(), kFisherSamples));
  const std::vector<std::string> schemes(q.weight_candidates().begin(), q.weight_candidates().end());
  std::vector<std::vector<std::string>> weight_schemes(job.layers.size(), schemes);
  std::vector<std::string> acts(job.layers.size());
  for (size_t l = 0; l < job.layers.size(); ++l) {
    acts[l] = UniformActSpec(*job.layers[l].second, job.spec.qpl().activation_bits());
  }
  ASSIGN_OR_RETURN(SensitivityAllocation a, Allocate(job, *job.model, fisher, weight_schemes, acts));
  job.sensitivity = a.fisher;
  job.w_chosen.assign(job.layers.size(), "");
  job.a_chosen.assign(job.layers.size(), "");
  for (size_t l = 0; l < job.layers.size(); ++l) {
    job.w_chosen[l] = a.choices[l].weight_spec;
    job.a_chosen[l] = a.choices[l].act_spec;
  }
  RETURN_IF_ERROR(ApplyChoices(job, *job.model, a.choices));
  const v1::Policy p = CurrentPolicy(job);
  job.progress.Emit({v1::PHASE_ALLOCATE, 0, 0, 0,
                     absl::StrFormat("exact allocation of the sensitivity model: average weight bits %.3f "
                                     "(%zu partial choices at most)",
                                     p.cost().average_weight_bits(), a.largest_frontier),
                     &p});
  return absl::OkStatus();
}

}  // namespace qsearch::search
