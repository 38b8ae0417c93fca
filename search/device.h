// The device a job runs on: "cpu" or "cuda:N". The job's model, its search parameters and
// each batch live there; the data set, checkpoints and exports stay on the CPU.
#ifndef QSEARCH_SEARCH_DEVICE_H_
#define QSEARCH_SEARCH_DEVICE_H_

#include <string>

#include <c10/core/Device.h>

#include "absl/status/statusor.h"

namespace qsearch::search {

// InvalidArgument for a name that is neither "cpu" nor "cuda:N" (N a small non-negative
// integer). Touches no device, so a worker can parse its flag before it confines itself.
absl::StatusOr<c10::Device> ParseDevice(const std::string& name);

// FailedPrecondition for a CUDA device this process cannot use: a LibTorch built without
// CUDA, no GPU visible, or an index past the GPUs there are.
absl::Status CheckDevice(c10::Device device);

// The device of `rank`'s process in a job on `device`: the CPU for every rank of a CPU
// job; cuda:(N + rank) for a CUDA job, one GPU per process (FailedPrecondition when the
// node has too few).
absl::StatusOr<c10::Device> RankDevice(c10::Device device, int rank);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_DEVICE_H_
