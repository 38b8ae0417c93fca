#include "search/device.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace qsearch::search {
namespace {

// GPUs this process sees (0 with a CPU-only LibTorch).
int CudaDevices() { return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0; }

absl::StatusOr<c10::Device> Cuda(int index) {
  if (index < 0) return absl::InvalidArgumentError("a CUDA device needs an index: cuda:N");
  const int count = CudaDevices();
  if (count == 0) {
    // LibTorch's CUDA library registers the CUDA device guard when it is linked in.
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda:", index, " cannot be used here: ",
        c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)
            ? "no GPU is visible to this process (check the node's driver and the container's GPU request)"
            : "this worker's LibTorch was built without CUDA (build qsearch against a CUDA LibTorch, or run "
              "the job on --devices cpu)"));
  }
  if (index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda:", index, " does not exist: this node has ", count, " GPU(s), cuda:0..cuda:", count - 1));
  }
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace

absl::StatusOr<c10::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::DeviceType::CPU);
  absl::string_view rest = name;
  int index = -1;
  if (!absl::ConsumePrefix(&rest, "cuda:") || rest.empty() || rest.size() > 3 ||
      rest.find_first_not_of("0123456789") != absl::string_view::npos || !absl::SimpleAtoi(rest, &index)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", name, "' is not one qsearch runs on: use cpu or cuda:N (N = 0, 1, ...)"));
  }
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

absl::Status CheckDevice(c10::Device device) {
  return device.is_cpu() ? absl::OkStatus() : Cuda(device.index()).status();
}

absl::StatusOr<std::vector<c10::Device>> ParseDevices(const std::string& names) {
  std::vector<c10::Device> out;
  for (absl::string_view name : absl::StrSplit(names, ',')) {
    ASSIGN_OR_RETURN(const c10::Device d, ParseDevice(std::string(name)));
    for (const c10::Device& seen : out) {
      if (seen.is_cpu() != d.is_cpu()) {
        return absl::InvalidArgumentError(absl::StrCat("devices '", names, "' mix the CPU and GPUs: give one kind"));
      }
      if (d.is_cuda() && seen == d) {
        return absl::InvalidArgumentError(absl::StrCat("devices '", names, "' name ", d.str(), " twice"));
      }
    }
    out.push_back(d);
  }
  return out;
}

absl::StatusOr<c10::Device> RankDevice(const std::vector<c10::Device>& devices, int world, int rank) {
  if (rank < 0 || rank >= world) return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of ", world));
  if (devices.size() == 1) return devices.front();
  if (static_cast<int>(devices.size()) != world) {
    return absl::InvalidArgumentError(absl::StrCat("a job of ", world, " process(es) was given ", devices.size(),
                                                   " devices: give one for all or one per process"));
  }
  return devices[rank];
}

}  // namespace qsearch::search
