// The baselines: what each trains and how its policy is chosen.
#include "search/baselines.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "search/bit_widths.h"
#include "search/cost.h"
#include "search/policy.h"
#include "search/sensitivity.h"
#include "search/spec.h"
#include "search/trainer.h"

namespace qsearch::search {
namespace {

constexpr char kUniformWeights[] = "uniform:bits=4,granularity=channel";

// A fresh model holding the pre-trained weights, folded like the searched one.
absl::StatusOr<std::shared_ptr<QuantModel>> PretrainedCopy(const JobContext& job) {
  ASSIGN_OR_RETURN(auto model, MakeModel(job.spec, {job.data.channels, job.data.height, job.data.width, job.data.classes}));
  model->to(job.device);
  model->Profile(job.data.train.images.slice(0, 0, std::min<std::int64_t>(64, job.data.train.size())).to(job.device));
  RETURN_IF_ERROR(LoadModuleState(*model, job.pretrained, "pre-trained model"));
  if (job.spec.fold_batchnorm()) model->FoldBatchNorm();
  return model;
}

// Uniform weights at `bits` everywhere except the `pinned` quantized layers, which get 8-bit
// weights and activations; nullopt when that does not fit the budget.
std::optional<std::vector<LayerChoice>> UniformChoices(const JobContext& job, const std::vector<bool>& pinned,
                                                       int bits) {
  const double act_bits = job.spec.qpl().activation_bits();
  std::vector<double> wb, ab;
  std::vector<LayerChoice> choices(job.layers.size());
  for (size_t l = 0, i = 0; l < job.layers.size(); ++l) {
    if (job.selection.excluded[l]) continue;
    const bool pin = pinned[i++];
    const int w = pin ? 8 : bits;
    const double a = pin ? 8 : act_bits;
    choices[l] = {AtBits(kUniformWeights, w), UniformActSpec(*job.layers[l].second, a), w, static_cast<int>(a)};
    wb.push_back(w);
    ab.push_back(a);
  }
  if (!WithinBudget(ComputeCost(job.selection.costs, wb, ab, job.spec.budget().activation_memory_peak()),
                    job.spec.budget())) {
    return std::nullopt;
  }
  return choices;
}

// The largest uniform width of 8..2 that fits with `pinned` layers at 8 bits.
std::optional<std::vector<LayerChoice>> LargestUniform(const JobContext& job, const std::vector<bool>& pinned) {
  for (int b = 8; b >= 2; --b) {
    if (auto c = UniformChoices(job, pinned, b)) return c;
  }
  return std::nullopt;
}

// The baseline's policy: the choices, or the sensitivity allocation over uniform schemes.
// nullopt (with a warning) when the baseline cannot meet the budget.
absl::StatusOr<std::optional<std::vector<LayerChoice>>> ChoicesFor(JobContext& job, const std::string& name,
                                                                   QuantModel& model, std::vector<double>* fisher) {
  const size_t n = job.selection.costs.size();
  std::vector<bool> pinned(n, false);
  if (name == "uniform") {
    if (auto c = LargestUniform(job, pinned)) return c;
    job.Warn("baseline uniform skipped: no uniform width of 2..8 bits fits the budget");
    return std::nullopt;
  }
  if (name == "uniform_first_last_8") {
    if (n > 0) pinned.front() = pinned.back() = true;
    if (auto c = LargestUniform(job, pinned)) return c;
    job.Warn("baseline uniform_first_last_8 skipped: with the first and last quantized layers at 8 bits, no "
             "uniform width of 2..8 bits for the rest fits the budget");
    return std::nullopt;
  }
  // sensitivity: symmetric and asymmetric per-channel uniform grids, the best of the two
  // at each width of 2 bits or more. The asymmetric grid's 1-bit form keeps zero and one
  // sign only: allowed (job floor 1, average 2 bits) it cost lenet5 5.4 points (79.63
  // against 85.01, docs/benchmarks.md), so this recipe stops at 2 whatever min_bits says.
  const auto layers = model.QuantLayers();
  ASSIGN_OR_RETURN(*fisher, WeightFisher(model, layers, job.data.train, job.spec.batch_size(), kFisherSamples));
  const std::vector<std::string> schemes = {kUniformWeights, "uniform:bits=4,granularity=channel,symmetric=false"};
  std::vector<std::vector<std::string>> weight_schemes(layers.size(), schemes);
  std::vector<std::string> acts(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) acts[l] = UniformActSpec(*layers[l].second, job.spec.qpl().activation_bits());
  std::vector<int> widths;
  for (int b = std::max(2, static_cast<int>(std::ceil(job.spec.qpl().min_bits()))); b <= job.spec.qpl().max_bits(); ++b) {
    widths.push_back(b);
  }
  WidthLimits from_two;
  from_two.weight.assign(layers.size(), widths);
  ASSIGN_OR_RETURN(SensitivityAllocation a, Allocate(job, model, *fisher, weight_schemes, acts, from_two));
  return std::optional<std::vector<LayerChoice>>(std::move(a.choices));
}

}  // namespace

int EpochsAfterPretrain(const v1::JobSpec& spec) {
  return spec.qss().epochs() + spec.qpl().epochs() + spec.finetune_epochs();
}

v1::Phase BaselinePhase(const std::string& name) {
  if (name == "float") return v1::PHASE_FLOAT_BASELINE;
  if (name == "uniform") return v1::PHASE_BASELINE;
  if (name == "uniform_first_last_8") return v1::PHASE_BASELINE_FIRST_LAST_8;
  return v1::PHASE_BASELINE_SENSITIVITY;
}

const char* BaselineLap(const std::string& name) {
  if (name == "float") return "float_baseline";
  if (name == "uniform") return "baseline";
  if (name == "uniform_first_last_8") return "baseline_first_last_8";
  return "baseline_sensitivity";
}

absl::Status RunBaseline(JobContext& job, const std::string& name) {
  const v1::Phase phase = BaselinePhase(name);
  ASSIGN_OR_RETURN(job.baseline_model, PretrainedCopy(job));
  v1::BaselineResult out;
  out.set_name(name);
  std::vector<double> fisher;
  if (name != "float") {
    ASSIGN_OR_RETURN(auto choices, ChoicesFor(job, name, *job.baseline_model, &fisher));
    if (!choices) {
      job.baseline_model.reset();
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(ApplyChoices(job, *job.baseline_model, *choices));
  }
  RETURN_IF_ERROR(TrainWeights(job, phase, *job.baseline_model, EpochsAfterPretrain(job.spec)));
  out.set_accuracy(Accuracy(*job.baseline_model, job.data.test));
  std::string what = "float on the same schedule";
  if (name != "float") {
    *out.mutable_policy() = PolicyOf(job, job.baseline_model->QuantLayers(), fisher);
    out.mutable_policy()->set_quantized_accuracy(out.accuracy());
    what = absl::StrFormat("%s at %.3g average weight bits", name, out.policy().cost().average_weight_bits());
  }
  if (name == "float") job.result.set_float_baseline_accuracy(out.accuracy());
  if (name == "uniform") {
    job.result.set_uniform_accuracy(out.accuracy());
    job.result.set_uniform_weight_bits(out.policy().cost().average_weight_bits());
    what = absl::StrFormat("uniform %g-bit", out.policy().cost().average_weight_bits());
  }
  // (The event carries no policy: a job's events' policies are the searched model's.)
  job.progress.Emit({phase, 0, 0, out.accuracy(), absl::StrFormat("%s: %.2f%%", what, out.accuracy())});
  *job.result.add_baselines() = std::move(out);
  job.baseline_model.reset();
  return absl::OkStatus();
}

}  // namespace qsearch::search
