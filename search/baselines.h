// What a user would get instead, each trained on the same schedule as the search (the
// epochs the searched model trains after pre-training) from the same pre-trained weights:
//   float                 the float model
//   uniform               per-channel uniform weights at the largest width that fits the
//                         budget, every layer alike
//   uniform_first_last_8  the first and last quantized layers at 8-bit weights and
//                         activations, the rest uniform at the largest width that fits
//   sensitivity           HAWQ-style: Fisher sensitivity x quantization error per width,
//                         solved exactly under the budget (sensitivity.h), uniform weights
// Activations are uniform at the job's width unless stated. Contract: RunBaseline records
// the accuracy (and the policy) in job.result.baselines, and the old figures
// (float_baseline_accuracy, uniform_accuracy) for float and uniform; the baseline model
// lives in job.baseline_model while it trains, so checkpoints and resumption cover it. A
// baseline that cannot meet the budget (first/last 8 bits at a tiny budget) is skipped
// with a warning, not a failure of the job.
#ifndef QSEARCH_SEARCH_BASELINES_H_
#define QSEARCH_SEARCH_BASELINES_H_

#include <string>

#include "absl/status/status.h"
#include "search/job_context.h"

namespace qsearch::search {

// Epochs the searched model trains after pre-training (QSS + QPL + fine-tuning): each
// baseline trains that long.
int EpochsAfterPretrain(const v1::JobSpec& spec);

// The phase a baseline's events carry and the key of its wall time in phase_seconds.
v1::Phase BaselinePhase(const std::string& name);
const char* BaselineLap(const std::string& name);

absl::Status RunBaseline(JobContext& job, const std::string& name);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_BASELINES_H_
