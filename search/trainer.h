// The training loop every phase shares: one epoch over the training split in a seeded
// order (augmented when the spec says so), accuracy on a split, the weight parameters an
// optimiser trains, and plain weight training with checkpoints (pre-training,
// fine-tuning, baselines). Contract: batches and noise depend only on the spec's seed and
// the step count, so a resumed job draws what an uninterrupted one would; every step
// checks the cancel flag; a non-finite loss is Internal naming phase and epoch.
#ifndef QSEARCH_SEARCH_TRAINER_H_
#define QSEARCH_SEARCH_TRAINER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "search/job_context.h"

namespace qsearch::search {

// One training step on (images, labels); returns the batch loss.
using StepFn = std::function<double(const at::Tensor& images, const at::Tensor& labels)>;

// One pass over `data` in batches of the spec's batch size; the mean batch loss. With
// several processes `step` gets this process's share of each batch (job.batch_images is
// the whole batch's size), and a last batch smaller than the world is skipped.
absl::StatusOr<double> RunEpoch(JobContext& job, v1::Phase phase, int epoch, const TensorDataset& data,
                                const StepFn& step);

// The rows [first, last) of a batch of n this process trains on next: all of them alone;
// with several processes its share (and the batch of n is the one in progress, see
// quantizers::Replicas::WholeBatchRatio), or nullopt when a batch is too small to give
// every process an image (the batch is then skipped by all of them).
std::optional<std::pair<std::int64_t, std::int64_t>> BatchShare(JobContext& job, std::int64_t n);

// The steps RunEpoch takes over n images: one per batch, less a last batch too small to share.
std::int64_t EpochSteps(const JobContext& job, std::int64_t n);

// The loss of this process's share of a batch of `batch_images`: the mean loss when the
// job runs in one process; with several (job.dp), the share's summed loss over the
// batch's image count, so the shares' gradients add up to the batch's mean-loss gradient.
at::Tensor ShareLoss(const JobContext& job, const at::Tensor& logits, const at::Tensor& labels,
                     std::int64_t batch_images);

// After backward, before the optimisers step: with several processes, sums `model`'s
// gradients over them. Returns the batch's loss (the shares' losses summed).
double SyncStep(JobContext& job, QuantModel& model, const at::Tensor& loss);

// Top-1 accuracy in % on `data`, in eval mode, batches of 512 (the model ends in train mode).
double Accuracy(QuantModel& model, const TensorDataset& data);

// The parameters weight training moves: everything that requires grad except the search's
// own (QSS logits, QPL widths), which have optimisers of their own.
std::vector<at::Tensor> WeightParams(QuantModel& model);

// Trains `model`'s weights for `epochs` with Adam (cosine decay to zero except in
// pre-training), an event and a checkpoint after every epoch.
absl::Status TrainWeights(JobContext& job, v1::Phase phase, QuantModel& model, int epochs);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_TRAINER_H_
