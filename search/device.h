// The devices a job runs on: "cpu", "cuda:N", or one per process of a data-parallel job
// ("cuda:0,cuda:1"). The job's model, its search parameters and each batch live there;
// the data set, checkpoints and exports stay on the CPU.
#ifndef QSEARCH_SEARCH_DEVICE_H_
#define QSEARCH_SEARCH_DEVICE_H_

#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "absl/status/statusor.h"

namespace qsearch::search {

// InvalidArgument for a name that is neither "cpu" nor "cuda:N" (N a small non-negative
// integer). Touches no device, so a worker can parse its flag before it confines itself.
absl::StatusOr<c10::Device> ParseDevice(const std::string& name);

// A comma-separated list of ParseDevice names, at least one; InvalidArgument also for a
// list that mixes the CPU with GPUs or names a GPU twice.
absl::StatusOr<std::vector<c10::Device>> ParseDevices(const std::string& names);

// FailedPrecondition for a CUDA device this process cannot use: a LibTorch built without
// CUDA, no GPU visible, or an index past the GPUs there are.
absl::Status CheckDevice(c10::Device device);

// The device of `rank`'s process in a job of `world` processes given `devices`: the only
// one when one is given (every rank shares it), else the rank's own; InvalidArgument when
// the list has another length.
absl::StatusOr<c10::Device> RankDevice(const std::vector<c10::Device>& devices, int world, int rank);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_DEVICE_H_
