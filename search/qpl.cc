// QPL: learned real widths under the budget penalty.
#include "search/qpl.h"

#include <algorithm>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "quantizers/spec.h"
#include "search/bit_widths.h"
#include "search/cost.h"
#include "search/policy.h"
#include "search/resume.h"
#include "search/sensitivity.h"
#include "search/trainer.h"

namespace qsearch::search {
namespace {

// Where each layer's width starts: the width of its QSS candidate, or (init "sensitivity")
// the exact allocation of the sensitivity model over the chosen schemes. Only a job that
// starts QPL afresh measures it: a resumed one restores the learned widths.
absl::StatusOr<std::vector<double>> InitialWidths(JobContext& job) {
  const auto& q = job.spec.qpl();
  std::vector<double> init(job.layers.size(), 0);
  for (size_t l = 0; l < job.layers.size(); ++l) {
    if (!job.selection.excluded[l]) init[l] = quantizers::ParseSpec(job.qss_w[l])->Real("bits");
  }
  if (q.init() != "sensitivity" || q.epochs() == 0 || FirstEpoch(job, v1::PHASE_QPL, q.epochs()) > 0) return init;
  ASSIGN_OR_RETURN(std::vector<double> fisher, WeightFisher(*job.model, job.layers, job.data.train,
                                                            job.spec.batch_size(), kFisherSamples));
  std::vector<std::vector<std::string>> schemes(job.layers.size());
  for (size_t l = 0; l < job.layers.size(); ++l) schemes[l] = {job.qss_w[l]};
  ASSIGN_OR_RETURN(SensitivityAllocation a, Allocate(job, *job.model, fisher, schemes, job.qss_a));
  for (size_t l = 0; l < job.layers.size(); ++l) {
    if (!job.selection.excluded[l]) init[l] = a.choices[l].w_bits;
  }
  return init;
}

// Precision mode for every selected layer, starting at `init` (InitialWidths).
absl::Status SetupQpl(JobContext& job, const std::vector<double>& init, std::vector<torch::Tensor>* bit_params) {
  const auto& q = job.spec.qpl();
  for (size_t l = 0; l < job.layers.size(); ++l) {
    if (job.selection.excluded[l]) continue;
    auto& layer = job.layers[l].second;
    const std::vector<int> w_ok = WeightWidths(job.qss_w[l], q);
    const std::vector<int> a_ok = ActWidths(job.qss_a[l], q);
    if (w_ok.empty() || a_ok.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", job.layers[l].first,
                                                     ": no usable bit width for its scheme"));
    }
    const double a_lo = a_ok.front(), a_hi = a_ok.back();
    // The penalty moves the widths to the budget from where they start.
    const double w_init = init[l];
    RETURN_IF_ERROR(layer->SetPrecision(job.qss_w[l], job.qss_a[l], w_ok.front(), w_ok.back(),
                                        std::clamp(w_init, double(w_ok.front()), double(w_ok.back())),
                                        a_lo, a_hi, q.activation_bits(), q.learn_activation_bits()));
    for (const auto& p : layer->named_parameters(/*recurse=*/false)) {
      if (p.key().rfind("bits_", 0) == 0 && p.value().requires_grad()) bit_params->push_back(p.value());
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunQpl(JobContext& job) {
  const auto& q = job.spec.qpl();
  const v1::Budget& budget = job.spec.budget();
  std::vector<torch::Tensor> bit_params;
  ASSIGN_OR_RETURN(const std::vector<double> init, InitialWidths(job));
  RETURN_IF_ERROR(SetupQpl(job, init, &bit_params));
  torch::optim::Adam w_opt(WeightParams(*job.model), torch::optim::AdamOptions(job.spec.learning_rate()));
  torch::optim::Adam b_opt(bit_params, torch::optim::AdamOptions(q.bits_lr()));
  RETURN_IF_ERROR(MaybeRestore(job, v1::PHASE_QPL, {&w_opt, &b_opt}));
  const bool hinge = q.penalty() == "hinge";
  // The budget penalty on the layers' current widths: cost.h's model on tensors.
  auto penalty = [&]() {
    std::vector<at::Tensor> wb, ab;
    for (size_t l = 0; l < job.layers.size(); ++l) {
      if (job.selection.excluded[l]) continue;
      wb.push_back(job.layers[l].second->WeightBits());
      ab.push_back(job.layers[l].second->ActBits());
    }
    const at::Tensor zero = at::zeros({}, at::TensorOptions().device(job.device));
    const Costs<at::Tensor> cost =
        CostOf<at::Tensor>(job.selection.costs, wb, ab, budget.activation_memory_peak(), zero,
                           [](const at::Tensor& a, const at::Tensor& b) { return at::maximum(a, b); });
    return BudgetPenalty<at::Tensor>(cost, budget, zero, [&](const at::Tensor& r) { return hinge ? at::relu(r) : r.abs(); });
  };
  job.model->train();
  for (int e = FirstEpoch(job, v1::PHASE_QPL, q.epochs()); e < q.epochs(); ++e) {
    ASSIGN_OR_RETURN(double loss, RunEpoch(job, v1::PHASE_QPL, e, job.data.train, [&](const at::Tensor& x, const at::Tensor& y) {
      w_opt.zero_grad();
      b_opt.zero_grad();
      at::Tensor l = ShareLoss(job, job.model->forward(x), y, job.batch_images);
      // The penalty is the whole batch's term: one process adds it.
      if (job.dp == nullptr || job.dp->rank() == 0) l = l + q.penalty_weight() * penalty();
      l.backward();
      const double loss = SyncStep(job, *job.model, l);
      w_opt.step();
      b_opt.step();
      return loss;
    }));
    v1::Policy p = CurrentPolicy(job);
    job.progress.Emit({v1::PHASE_QPL, e, loss, Accuracy(*job.model, job.data.val),
                       absl::StrFormat("average weight bits %.3f", p.cost().average_weight_bits()), &p,
                       /*epoch_end=*/true});
    RETURN_IF_ERROR(SaveCheckpoint(job, v1::PHASE_QPL, e + 1, {&w_opt, &b_opt}));
  }
  return absl::OkStatus();
}

}  // namespace qsearch::search
