// RunSearchJob: the whole pipeline of one search job, in-process: load data and model,
// pre-train in float, QSS (scheme per layer), QPL (bits per layer) with budget repair,
// fine-tune with the fixed policy, evaluate (float, quantized, optional uniform baseline)
// and export. Progress goes to a callback as typed events; a cancel flag is checked every
// training step. No gRPC here: the server runs this in a worker process.
#ifndef QSEARCH_SEARCH_JOB_H_
#define QSEARCH_SEARCH_JOB_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "qsearch/v1/job.pb.h"

namespace qsearch::search {

struct JobOptions {
  // Progress, in order. Events are numbered 1, 2, ...; a resumed job numbers on from its
  // checkpoint and marks the events only a resumption has (loading, "resumed from
  // checkpoint") with sequence 0.
  std::function<void(const v1::JobEvent&)> on_event;  // may be empty
  const std::atomic<bool>* cancel = nullptr;          // checked every step
  std::string out_dir;                                // exports go here when set
  // Written at the end of every epoch; default out_dir/checkpoint.pt, none without out_dir.
  // Removed when the job finishes.
  std::string checkpoint_path;
  // Continue from the checkpoint when one exists (FailedPrecondition when it was written
  // for another spec, DataLoss when it is unreadable); start afresh when there is none.
  bool resume = false;
};

// Fills unset fields of a spec with the documented defaults.
v1::JobSpec WithDefaults(v1::JobSpec spec);

// Checks a spec without loading anything heavy: model name, candidate specs, budget,
// option ranges. InvalidArgument naming the field at fault.
absl::Status ValidateSpec(const v1::JobSpec& spec);

// ValidateSpec plus what needs the model's layer table but no data: layer selection and
// budget feasibility, for data sets whose image shape is known from the kind alone. Fast
// enough for an RPC handler (builds the model, one forward pass on a zero image).
absl::Status PrecheckSpec(const v1::JobSpec& spec);

// Runs the job. Cancelled when the flag is set; InvalidArgument for bad specs or data,
// NotFound for missing data files.
absl::StatusOr<v1::JobResult> RunSearchJob(const v1::JobSpec& spec, const JobOptions& options);

// Default QSS candidate sets at a width: uniform, ESB, power-of-two and ul2q for weights
// (per channel); uniform, PACT and LSQ for activations.
std::vector<std::string> DefaultWeightCandidates(int bits = 4);
std::vector<std::string> DefaultActivationCandidates(int bits = 4);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_JOB_H_
