// Job checkpoints: the CheckpointState message plus named tensor groups (the model being
// searched, the pre-trained snapshot, a baseline model) and optimiser states, in one
// LibTorch pickle file written atomically (temporary file + rename), so a crash while
// writing leaves the previous checkpoint intact.
#ifndef QSEARCH_SEARCH_CHECKPOINT_H_
#define QSEARCH_SEARCH_CHECKPOINT_H_

#include <map>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "qsearch/internal/worker.pb.h"
#include "qsearch/v1/job.pb.h"

namespace qsearch::search {

using TensorMap = std::map<std::string, at::Tensor>;

struct CheckpointData {
  internal::CheckpointState state;
  std::map<std::string, TensorMap> groups;    // e.g. "main", "pretrained", "baseline"
  std::map<std::string, std::string> blobs;   // serialised optimiser states
};

absl::Status WriteCheckpoint(const std::string& path, const CheckpointData& data);

// Writes `bytes` to path + ".tmp", flushes it to disk, renames it over `path` and
// flushes the directory: readers see the old file or the new one, never a torn one, even
// after a crash. A full disk is ResourceExhausted.
absl::Status WriteFileAtomically(const std::string& path, const std::vector<char>& bytes);
// NotFound when the file is missing; DataLoss when it is not a readable checkpoint.
absl::StatusOr<CheckpointData> ReadCheckpoint(const std::string& path);

// Parameters and buffers by their module paths, detached.
TensorMap ModuleState(torch::nn::Module& module);
// Copies `state` into `module`. Strict: both sides must name the same tensors with the same
// shapes, else FailedPrecondition naming the first difference (`what` says which model).
absl::Status LoadModuleState(torch::nn::Module& module, const TensorMap& state, absl::string_view what);

std::string SaveOptimizer(const torch::optim::Optimizer& optimizer);
absl::Status LoadOptimizer(torch::optim::Optimizer& optimizer, const std::string& blob);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_CHECKPOINT_H_
