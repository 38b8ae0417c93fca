// RunSearchJob: the whole pipeline of one search job, in-process (job.cc shows its order
// on one screen): load data and model, pre-train in float, QSS (scheme per layer), QPL
// (bits per layer) with budget repair, fine-tune with the fixed policy, evaluate (float,
// quantized, optional baselines) and export. Progress goes to a callback as typed events;
// a cancel flag is checked every training step. No gRPC here: the server runs this in a
// worker process.
#ifndef QSEARCH_SEARCH_JOB_H_
#define QSEARCH_SEARCH_JOB_H_

#include <atomic>
#include <functional>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "qsearch/v1/job.pb.h"

namespace qsearch::search {

// How one run of a job executes: none of it changes what the job computes or its
// checkpoints, so a job can resume under other options (another thread count, machine).
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
  int threads = 0;  // LibTorch intra-op threads; 0 leaves the process's setting
  // Where the model, the search parameters and each batch live: "cpu", "cuda:N", or one
  // device per rank of a data-parallel job, "cuda:0,cuda:1" (device.h). Checkpoints are
  // written from the CPU, so a job may resume on another device.
  std::string device = "cpu";
  // A job with spec.world_size > 1 runs as that many processes on one node, each calling
  // RunSearchJob with its rank and the 127.0.0.1 port where rank 0 hosts the rendezvous
  // (distributed.h). Only rank 0 reports events, writes checkpoints and exports; the
  // others read its checkpoint when resuming.
  int rank = 0;
  int rendezvous_port = 0;
  // Testing: the data, the model and every tensor the job makes are float64 (the process's
  // default dtype is set to it for the call), so runs that sum in another order differ by
  // double rounding only; the quantizers then take their ATen forms.
  bool float64 = false;
  // Benchmarks: arms of one seed share one pre-training. When set, these float weights
  // (the model's state, as on_pretrained reported them) replace pre-training; the float
  // accuracy is measured on them, and the phases after it draw the batches and noise of a
  // job that pre-trained itself (they count the replaced steps as done). The caller keeps
  // them alive for the call.
  const std::map<std::string, at::Tensor>* pretrained = nullptr;
  std::function<void(const std::map<std::string, at::Tensor>&)> on_pretrained;  // may be empty
};

// Runs the job: applies the spec's defaults (a no-op for a spec the service stored) and
// validates it first. Cancelled when the flag is set; InvalidArgument for bad specs or
// data, NotFound for missing data files.
absl::StatusOr<v1::JobResult> RunSearchJob(const v1::JobSpec& spec, const JobOptions& options);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_JOB_H_
