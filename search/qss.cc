// QSS: scheme logits, the search epochs, the argmax choice.
#include "search/qss.h"

#include <cmath>

#include <torch/torch.h>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "search/bit_widths.h"
#include "search/policy.h"
#include "search/qpl.h"
#include "search/resume.h"
#include "search/sensitivity.h"
#include "search/trainer.h"

namespace qsearch::search {
namespace {

// The search modes of every selected layer and the logits QSS trains.
absl::Status SetupQss(JobContext& job, std::vector<torch::Tensor>* arch) {
  const auto& q = job.spec.qss();
  std::vector<std::string> wc(q.weight_candidates().begin(), q.weight_candidates().end());
  std::vector<std::string> ac(q.activation_candidates().begin(), q.activation_candidates().end());
  at::Tensor shared_alpha, shared_beta;
  if (q.model_wide()) {
    const auto on_device = at::TensorOptions().device(job.device);  // the default dtype
    shared_alpha = job.model->register_parameter("arch_alpha", at::zeros({static_cast<std::int64_t>(wc.size())}, on_device));
    shared_beta = job.model->register_parameter("arch_beta", at::zeros({static_cast<std::int64_t>(ac.size())}, on_device));
    *arch = {shared_alpha, shared_beta};
  }
  for (size_t l = 0; l < job.layers.size(); ++l) {
    if (job.selection.excluded[l]) continue;
    auto& layer = job.layers[l].second;
    const auto acts = layer->geometry().input_signed ? ForSignedInput(ac) : ac;
    RETURN_IF_ERROR(layer->SetSearch(wc, acts));
    layer->set_gumbel(q.gumbel());
    if (q.model_wide()) {
      if (acts.size() != ac.size()) {
        return absl::InvalidArgumentError(
            "model-wide search needs activation candidates that all support signed inputs");
      }
      layer->ShareLogits(shared_alpha, shared_beta);
    } else {
      arch->push_back(layer->weight_logits());
      arch->push_back(layer->act_logits());
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunQss(JobContext& job) {
  const auto& q = job.spec.qss();
  std::vector<torch::Tensor> arch;
  RETURN_IF_ERROR(SetupQss(job, &arch));
  torch::optim::Adam w_opt(WeightParams(*job.model), torch::optim::AdamOptions(job.spec.learning_rate()));
  torch::optim::Adam a_opt(arch, torch::optim::AdamOptions(q.arch_lr()));
  RETURN_IF_ERROR(MaybeRestore(job, v1::PHASE_QSS, {&w_opt, &a_opt}));
  job.model->train();
  const std::int64_t bs = job.spec.batch_size();
  // The default pipeline allocates widths from each layer's Fisher sensitivity right after
  // QSS. The weight gradients (summed over the ranks: the whole batch's) of the last
  // epoch's last kFisherSamples images are that measure, on weights close to the final
  // ones, so the allocation needs no pass of its own.
  const bool measure_fisher = AllocatesWithoutQpl(job.spec);
  const std::int64_t fisher_from = EpochSteps(job, job.data.train.size()) - (kFisherSamples + bs - 1) / bs;
  for (int e = FirstEpoch(job, v1::PHASE_QSS, q.epochs()); e < q.epochs(); ++e) {
    const bool last = e == q.epochs() - 1;
    std::vector<double> fisher;
    std::int64_t fisher_batches = 0;
    const double progress = q.epochs() > 1 ? static_cast<double>(e) / (q.epochs() - 1) : 1.0;
    const double tau = q.temperature_start() * std::pow(q.temperature_end() / q.temperature_start(), progress);
    for (auto& [name, layer] : job.layers) layer->set_temperature(tau);
    std::int64_t val_cursor = 0, weight_steps = 0, epoch_step = 0;
    ASSIGN_OR_RETURN(double loss, RunEpoch(job, v1::PHASE_QSS, e, job.data.train, [&](const at::Tensor& x, const at::Tensor& y) {
      w_opt.zero_grad();
      a_opt.zero_grad();
      at::Tensor l = ShareLoss(job, job.model->forward(x), y, job.batch_images);
      l.backward();
      const double loss = SyncStep(job, *job.model, l);
      if (measure_fisher && last && epoch_step++ >= fisher_from) {
        AddSquaredGradients(job.layers, &fisher);
        ++fisher_batches;
      }
      w_opt.step();
      if (!q.bilevel()) {
        a_opt.step();
        return loss;
      }
      // First-order bilevel: the logits follow the loss on a held-out batch, every
      // arch_every weight steps.
      if (++weight_steps % q.arch_every() != 0) return loss;
      const std::int64_t nv = job.data.val.size();
      if (val_cursor >= nv) val_cursor = 0;
      const std::int64_t begin = val_cursor, val_images = std::min(nv, val_cursor + bs) - begin;
      val_cursor += bs;
      const auto share = BatchShare(job, val_images);
      if (!share) return loss;
      w_opt.zero_grad();
      a_opt.zero_grad();
      at::Tensor vx = job.data.val.images.slice(0, begin + share->first, begin + share->second).to(job.device);
      at::Tensor vy = job.data.val.labels.slice(0, begin + share->first, begin + share->second).to(job.device);
      at::Tensor vl = ShareLoss(job, job.model->forward(vx), vy, val_images);
      vl.backward();
      SyncStep(job, *job.model, vl);
      a_opt.step();
      return loss;
    }));
    v1::Policy p = CurrentPolicy(job);
    job.progress.Emit({v1::PHASE_QSS, e, loss, Accuracy(*job.model, job.data.val),
                       absl::StrFormat("temperature %.3g", tau), &p, /*epoch_end=*/true});
    if (fisher_batches > 0) {
      for (double& f : fisher) f /= static_cast<double>(fisher_batches);
      job.sensitivity = std::move(fisher);  // saved with the checkpoint below
    }
    RETURN_IF_ERROR(SaveCheckpoint(job, v1::PHASE_QSS, e + 1, {&w_opt, &a_opt}));
  }
  if (Finished(job, v1::PHASE_QSS)) return absl::OkStatus();  // choices came with the checkpoint
  job.qss_w.assign(job.layers.size(), "");
  job.qss_a.assign(job.layers.size(), "");
  for (size_t l = 0; l < job.layers.size(); ++l) {
    if (job.selection.excluded[l]) continue;
    auto& layer = job.layers[l].second;
    job.qss_w[l] = layer->weight_candidates()[layer->ChosenWeight()];
    job.qss_a[l] = layer->act_candidates()[layer->ChosenAct()];
  }
  return absl::OkStatus();
}

}  // namespace qsearch::search
