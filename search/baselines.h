// What a user would get instead, trained on the same schedule as the search from the same
// pre-trained weights: the float model, and the largest uniform weight width that fits
// the budget (per-channel uniform weights, uniform activations at the job's width).
// Contract: each returns its test accuracy; the baseline model lives in
// job.baseline_model while it trains, so checkpoints and resumption cover it.
#ifndef QSEARCH_SEARCH_BASELINES_H_
#define QSEARCH_SEARCH_BASELINES_H_

#include "absl/status/statusor.h"
#include "search/job_context.h"

namespace qsearch::search {

// Epochs the searched model trains after pre-training (QSS + QPL + fine-tuning): each
// baseline trains that long.
int EpochsAfterPretrain(const v1::JobSpec& spec);

absl::StatusOr<double> FloatBaseline(JobContext& job);
// FailedPrecondition when no width of 2..8 bits fits; `bits` gets the width used.
absl::StatusOr<double> UniformBaseline(JobContext& job, double* bits);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_BASELINES_H_
