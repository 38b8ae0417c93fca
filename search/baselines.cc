// The float and uniform baselines.
#include "search/baselines.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "search/cost.h"
#include "search/spec.h"
#include "search/trainer.h"

namespace qsearch::search {
namespace {

// A fresh model holding the pre-trained weights, folded like the searched one.
absl::StatusOr<std::shared_ptr<QuantModel>> PretrainedCopy(const JobContext& job) {
  ASSIGN_OR_RETURN(auto model, MakeModel(job.spec, {job.data.channels, job.data.height, job.data.width, job.data.classes}));
  model->Profile(job.data.train.images.slice(0, 0, std::min<std::int64_t>(64, job.data.train.size())));
  RETURN_IF_ERROR(LoadModuleState(*model, job.pretrained, "pre-trained model"));
  if (job.spec.fold_batchnorm()) model->FoldBatchNorm();
  return model;
}

}  // namespace

int EpochsAfterPretrain(const v1::JobSpec& spec) {
  return spec.qss().epochs() + spec.qpl().epochs() + spec.finetune_epochs();
}

absl::StatusOr<double> FloatBaseline(JobContext& job) {
  ASSIGN_OR_RETURN(job.baseline_model, PretrainedCopy(job));
  RETURN_IF_ERROR(TrainWeights(job, v1::PHASE_FLOAT_BASELINE, *job.baseline_model, EpochsAfterPretrain(job.spec)));
  const double acc = Accuracy(*job.baseline_model, job.data.test);
  job.baseline_model.reset();
  return acc;
}

absl::StatusOr<double> UniformBaseline(JobContext& job, double* bits_out) {
  // Largest uniform weight width whose policy fits the budget, activations as the search.
  const double act_bits = job.spec.qpl().activation_bits();
  int chosen = 0;
  for (int b = 8; b >= 2; --b) {
    std::vector<double> wb(job.selection.costs.size(), b), ab(job.selection.costs.size(), act_bits);
    if (WithinBudget(ComputeCost(job.selection.costs, wb, ab, job.spec.budget().activation_memory_peak()), job.spec.budget())) {
      chosen = b;
      break;
    }
  }
  if (chosen == 0) return absl::FailedPreconditionError("no uniform width of 2..8 bits fits the budget");
  *bits_out = chosen;
  ASSIGN_OR_RETURN(job.baseline_model, PretrainedCopy(job));
  auto layers = job.baseline_model->QuantLayers();
  for (size_t l = 0; l < layers.size(); ++l) {
    if (job.selection.excluded[l]) continue;
    const std::string act = layers[l].second->geometry().input_signed
                                ? absl::StrCat("uniform_act:bits=", act_bits, ",signed=true")
                                : absl::StrCat("uniform_act:bits=", act_bits);
    RETURN_IF_ERROR(layers[l].second->SetFixed(
        absl::StrCat("uniform:bits=", chosen, ",granularity=channel"), act));
  }
  RETURN_IF_ERROR(TrainWeights(job, v1::PHASE_BASELINE, *job.baseline_model, EpochsAfterPretrain(job.spec)));
  const double acc = Accuracy(*job.baseline_model, job.data.test);
  job.baseline_model.reset();
  return acc;
}

}  // namespace qsearch::search
