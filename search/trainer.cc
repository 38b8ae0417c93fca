// The epoch loop, accuracy and weight training.
#include "search/trainer.h"

#include <cmath>
#include <set>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "search/resume.h"

namespace qsearch::search {

void JobContext::Warn(const std::string& message) {
  result.add_warnings(message);
  Progress::Event e;
  e.phase = v1::PHASE_LOADING;
  e.message = absl::StrCat("warning: ", message);
  e.warning = true;
  progress.Emit(e);
}

absl::StatusOr<double> RunEpoch(JobContext& job, v1::Phase phase, int epoch, const TensorDataset& data,
                                const StepFn& step) {
  const std::int64_t n = data.size();
  const std::int64_t bs = job.spec.batch_size();
  // Seeded by the step count so a resumed run draws the same batches and noise.
  at::manual_seed(job.spec.seed() * 1000003 + static_cast<std::uint64_t>(job.progress.steps_done));
  at::Tensor perm = at::randperm(n, at::TensorOptions(at::kLong));
  double total = 0;
  std::int64_t batches = 0;
  for (std::int64_t i = 0; i < n; i += bs) {
    if (job.Cancelled()) return absl::CancelledError("job cancelled");
    at::Tensor idx = perm.slice(0, i, std::min(n, i + bs));
    const auto share = BatchShare(job, idx.size(0));
    if (!share) break;
    // Each process takes its share after augmentation, so the batch and its noise are the
    // ones a single process draws.
    at::Tensor images = data.images.index_select(0, idx);
    if (job.augmentation.crop || job.augmentation.flip) images = Augment(images, job.augmentation);
    job.batch_images = idx.size(0);
    const double loss = step(images.slice(0, share->first, share->second).to(job.device),
                             data.labels.index_select(0, idx).slice(0, share->first, share->second).to(job.device));
    if (!std::isfinite(loss)) {
      return absl::InternalError(absl::StrCat("training diverged (loss ", loss, ") in ", v1::Phase_Name(phase),
                                              " epoch ", epoch));
    }
    total += loss;
    ++batches;
    ++job.progress.steps_done;
    Tick();
  }
  return batches > 0 ? total / batches : 0.0;
}

namespace {
// A batch of n gives every process at least one image.
bool Shareable(const JobContext& job, std::int64_t n) { return job.dp == nullptr || n >= job.dp->world(); }
}  // namespace

std::optional<std::pair<std::int64_t, std::int64_t>> BatchShare(JobContext& job, std::int64_t n) {
  if (!Shareable(job, n)) return std::nullopt;
  if (job.dp == nullptr) return std::make_pair(std::int64_t{0}, n);
  return job.dp->StartBatch(n);
}

std::int64_t EpochSteps(const JobContext& job, std::int64_t n) {
  if (n <= 0) return 0;
  const std::int64_t bs = job.spec.batch_size();
  const std::int64_t batches = (n + bs - 1) / bs;
  return Shareable(job, n - (batches - 1) * bs) ? batches : batches - 1;
}

at::Tensor ShareLoss(const JobContext& job, const at::Tensor& logits, const at::Tensor& labels,
                     std::int64_t batch_images) {
  if (job.dp == nullptr) return torch::cross_entropy_loss(logits, labels);
  return torch::nn::functional::cross_entropy(
             logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)) /
         static_cast<double>(batch_images);
}

double SyncStep(JobContext& job, QuantModel& model, const at::Tensor& loss) {
  if (job.dp == nullptr) return loss.item<double>();
  return job.dp->SumGradients(model.parameters(), loss.item<double>());
}

double Accuracy(QuantModel& model, const TensorDataset& data) {
  torch::NoGradGuard ng;
  model.eval();
  std::int64_t correct = 0;
  const std::int64_t n = data.size();
  const c10::Device device = model.device();
  for (std::int64_t i = 0; i < n; i += 512) {
    at::Tensor x = data.images.slice(0, i, std::min(n, i + 512)).to(device);
    at::Tensor y = data.labels.slice(0, i, std::min(n, i + 512)).to(device);
    correct += model.forward(x).argmax(1).eq(y).sum().item<std::int64_t>();
    Tick();
  }
  model.train();
  return n > 0 ? 100.0 * static_cast<double>(correct) / static_cast<double>(n) : 0.0;
}

std::vector<at::Tensor> WeightParams(QuantModel& model) {
  static const std::set<std::string> kSearchParams = {"arch_alpha", "arch_beta", "bits_w", "bits_a"};
  std::vector<at::Tensor> out;
  for (const auto& p : model.named_parameters()) {
    const std::string& key = p.key();
    if (kSearchParams.count(key.substr(key.rfind('.') + 1))) continue;
    if (p.value().requires_grad()) out.push_back(p.value());
  }
  return out;
}

absl::Status TrainWeights(JobContext& job, v1::Phase phase, QuantModel& model, int epochs) {
  torch::optim::Adam opt(WeightParams(model), torch::optim::AdamOptions(job.spec.learning_rate()));
  RETURN_IF_ERROR(MaybeRestore(job, phase, {&opt}));
  model.train();
  // Phases that end in a measured model (fine-tuning, both baselines) decay the learning
  // rate to zero on a cosine: the last epoch's weights are then a settled point, not one
  // noisy step, so float, uniform and mixed accuracies compare like for like.
  // Pre-training keeps the rate, since the search goes on from there.
  const bool anneal = phase != v1::PHASE_PRETRAIN;
  const std::int64_t bs = job.spec.batch_size();
  const std::int64_t batches = (job.data.train.size() + bs - 1) / bs;
  const double total_steps = static_cast<double>(std::max<std::int64_t>(1, batches * epochs));
  const int first = FirstEpoch(job, phase, epochs);
  std::int64_t step = batches * first;
  for (int e = first; e < epochs; ++e) {
    ASSIGN_OR_RETURN(double loss, RunEpoch(job, phase, e, job.data.train, [&](const at::Tensor& x, const at::Tensor& y) {
      if (anneal) {
        const double lr = job.spec.learning_rate() * 0.5 * (1 + std::cos(M_PI * static_cast<double>(step) / total_steps));
        static_cast<torch::optim::AdamOptions&>(opt.param_groups()[0].options()).lr(lr);
      }
      ++step;
      opt.zero_grad();
      at::Tensor l = ShareLoss(job, model.forward(x), y, job.batch_images);
      l.backward();
      const double loss = SyncStep(job, model, l);
      opt.step();
      return loss;
    }));
    job.progress.Emit({phase, e, loss, Accuracy(model, job.data.val), "epoch done", nullptr, /*epoch_end=*/true});
    RETURN_IF_ERROR(SaveCheckpoint(job, phase, e + 1, {&opt}));
  }
  return absl::OkStatus();
}

}  // namespace qsearch::search
