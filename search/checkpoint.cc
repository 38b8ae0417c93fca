// Checkpoint file layout: a pickled dict
//   {"state": uint8 tensor (CheckpointState bytes),
//    "groups": {group: {tensor name: tensor}},
//    "blobs": {name: uint8 tensor (torch::serialize archive bytes)}}
// Byte strings travel as uint8 tensors so nothing depends on string encodings.
#include "search/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"

namespace qsearch::search {
namespace {

at::Tensor BytesToTensor(const std::string& bytes) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(bytes.size())}, at::kByte);
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

std::string TensorToBytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()));
}

}  // namespace

absl::Status WriteCheckpoint(const std::string& path, const CheckpointData& data) {
  return CatchTorch("writing checkpoint", [&]() -> absl::Status {
    c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
    root.insert("state", BytesToTensor(data.state.SerializeAsString()));
    c10::impl::GenericDict groups(c10::StringType::get(), c10::AnyType::get());
    for (const auto& [name, tensors] : data.groups) {
      c10::Dict<std::string, at::Tensor> g;
      for (const auto& [key, t] : tensors) g.insert(key, t.cpu());  // readable where no GPU is
      groups.insert(name, g);
    }
    root.insert("groups", groups);
    c10::Dict<std::string, at::Tensor> blobs;
    for (const auto& [name, bytes] : data.blobs) blobs.insert(name, BytesToTensor(bytes));
    root.insert("blobs", blobs);
    const std::vector<char> bytes = torch::pickle_save(c10::IValue(root));
    return WriteFileAtomically(path, bytes);
  });
}

absl::Status WriteFileAtomically(const std::string& path, const std::vector<char>& bytes) {
  return WriteFileDurably(path, absl::string_view(bytes.data(), bytes.size()));
}

absl::StatusOr<CheckpointData> ReadCheckpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("no checkpoint at ", path));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto parsed = CatchTorch("reading checkpoint", [&]() -> absl::StatusOr<CheckpointData> {
    const c10::IValue root_value = torch::pickle_load(bytes);
    if (!root_value.isGenericDict()) return absl::DataLossError("not a qsearch checkpoint");
    const auto root = root_value.toGenericDict();
    if (!root.contains("state") || !root.contains("groups") || !root.contains("blobs")) {
      return absl::DataLossError("not a qsearch checkpoint (missing state, groups or blobs)");
    }
    CheckpointData data;
    if (!data.state.ParseFromString(TensorToBytes(root.at("state").toTensor()))) {
      return absl::DataLossError("checkpoint state does not parse");
    }
    for (const auto& g : root.at("groups").toGenericDict()) {
      TensorMap& m = data.groups[g.key().toStringRef()];
      for (const auto& t : g.value().toGenericDict()) m[t.key().toStringRef()] = t.value().toTensor();
    }
    for (const auto& b : root.at("blobs").toGenericDict()) {
      data.blobs[b.key().toStringRef()] = TensorToBytes(b.value().toTensor());
    }
    return data;
  });
  if (!parsed.ok() && parsed.status().code() != absl::StatusCode::kDataLoss) {
    return absl::DataLossError(absl::StrCat("checkpoint ", path, " is corrupt or truncated: ", parsed.status().message()));
  }
  return parsed;
}

TensorMap ModuleState(torch::nn::Module& module) {
  TensorMap out;
  for (const auto& p : module.named_parameters()) out[p.key()] = p.value().detach();
  for (const auto& b : module.named_buffers()) out[b.key()] = b.value().detach();
  return out;
}

absl::Status LoadModuleState(torch::nn::Module& module, const TensorMap& state, absl::string_view what) {
  TensorMap target = ModuleState(module);
  for (const auto& [name, t] : target) {
    auto it = state.find(name);
    if (it == state.end()) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint of the ", what, " lacks tensor '", name, "'"));
    }
    if (!it->second.sizes().equals(t.sizes())) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint of the ", what, ": tensor '", name,
                                                        "' has another shape"));
    }
  }
  for (const auto& [name, t] : state) {
    if (!target.count(name)) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint of the ", what, " has tensor '", name,
                                                        "' that the model lacks"));
    }
  }
  torch::NoGradGuard ng;
  for (auto& [name, t] : target) t.copy_(state.at(name));
  return absl::OkStatus();
}

std::string SaveOptimizer(const torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

absl::Status LoadOptimizer(torch::optim::Optimizer& optimizer, const std::string& blob) {
  return CatchTorch("restoring optimiser state", [&]() -> absl::Status {
    torch::serialize::InputArchive archive;
    std::istringstream in(blob);
    // The state follows the parameters' device, which may not be the one it was saved from.
    c10::optional<c10::Device> device;
    for (const auto& group : optimizer.param_groups()) {
      if (!group.params().empty()) device = group.params().front().device();
      if (device) break;
    }
    archive.load_from(in, device);
    optimizer.load(archive);
    return absl::OkStatus();
  });
}

}  // namespace qsearch::search
