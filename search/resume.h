// Checkpoints and resumption. A job resumed from (phase P, epoch E) replays the cheap
// set-up of every phase up to P so the model has the same modules, skips the training it
// already did, loads the saved tensors and optimiser states at P's set-up, and goes on at
// epoch E: it ends with exactly the figures of an uninterrupted run. Contract: a
// checkpoint written for another spec is FailedPrecondition; an unreadable one DataLoss.
#ifndef QSEARCH_SEARCH_RESUME_H_
#define QSEARCH_SEARCH_RESUME_H_

#include <string>
#include <vector>

#include <torch/optim/optimizer.h>

#include "absl/status/status.h"
#include "search/job_context.h"

namespace qsearch::search {

using Optimizers = std::vector<torch::optim::Optimizer*>;

// Where the job's checkpoint lives ("" when it keeps none).
std::string CheckpointPath(const JobOptions& options);

// Phases in the order a job runs them (the enum's numbers are not that order).
int PhaseOrder(v1::Phase phase);

// Reads the checkpoint when the options ask to resume and one exists, restoring the
// choices, result, numbering and clock it holds.
absl::Status LoadResumePoint(JobContext& job);
// Epoch to start `phase` at: all done before the resume point, E at it, 0 after it.
int FirstEpoch(const JobContext& job, v1::Phase phase, int epochs);
// True for a phase the checkpointed run finished.
bool Finished(const JobContext& job, v1::Phase phase);
// At the resume point's phase (once): loads the models' tensors and `optimizers`' states
// and says so in an unnumbered event.
absl::Status MaybeRestore(JobContext& job, v1::Phase phase, const Optimizers& optimizers);
// Written at the end of every epoch: the job's state, models and optimiser states.
absl::Status SaveCheckpoint(JobContext& job, v1::Phase phase, int next_epoch, const Optimizers& optimizers);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_RESUME_H_
