// Spec checks at Create, with the zoo's layer tables cached.
#include "search/precheck.h"

#include <cstring>
#include <fstream>
#include <map>
#include <memory>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"
#include "search/layer_selection.h"
#include "search/spec.h"

namespace qsearch::search {
namespace {

// A model profiled at the data set's input shape, with its quantizable layers.
struct ProfiledModel {
  std::shared_ptr<QuantModel> model;
  std::vector<NamedLayer> layers;
};

ProfiledModel Profiled(std::shared_ptr<QuantModel> model, const ModelShape& shape) {
  model->Profile(at::zeros({1, shape.channels, shape.height, shape.width}));
  std::vector<NamedLayer> layers = model->QuantLayers();
  return {std::move(model), std::move(layers)};
}

// Zoo models' layer tables, built and profiled once per (model, input shape): a zoo
// architecture's layers, sizes and MACs depend on nothing else, and building one is most
// of what checking a spec costs. Entries are only read after insertion (geometry()), so
// concurrent checks share them; at most zoo size x data set shapes entries.
absl::StatusOr<std::shared_ptr<const ProfiledModel>> ZooLayerTable(const std::string& name, const ModelShape& shape) {
  static absl::Mutex mu(absl::kConstInit);
  static auto* cache = new std::map<std::string, std::shared_ptr<const ProfiledModel>>();
  const std::string key = absl::StrCat(name, "/", shape.channels, "x", shape.height, "x", shape.width, "/", shape.classes);
  {
    absl::MutexLock lock(&mu);
    if (auto it = cache->find(key); it != cache->end()) return it->second;
  }
  ASSIGN_OR_RETURN(auto model, BuildModel(name, shape));
  auto entry = std::make_shared<const ProfiledModel>(Profiled(std::move(model), shape));
  absl::MutexLock lock(&mu);
  return cache->emplace(key, std::move(entry)).first->second;  // a racing first check may have won
}

}  // namespace

absl::Status PrecheckSpec(const v1::JobSpec& spec) {
  RETURN_IF_ERROR(ValidateSpec(spec));
  if (!spec.model_path().empty()) {
    // A user's model is looked at, never loaded here: loading TorchScript can run its code
    // (__setstate__), so the worker checks it in its sandbox.
    std::ifstream in(spec.model_path(), std::ios::binary);
    char magic[4] = {};
    in.read(magic, 4);
    if (!in || std::memcmp(magic, "PK\x03\x04", 4) != 0) {
      return absl::InvalidArgumentError(
          "model_path: the file is not a TorchScript archive (save the model with torch.jit.save after "
          "torch.jit.script or torch.jit.trace)");
    }
    return absl::OkStatus();
  }
  ModelShape shape;
  const std::string& kind = spec.dataset().kind();
  if (kind == "fashion_mnist" || kind == "mnist" || kind.empty()) {
    shape = {1, 28, 28, 10};
  } else if (kind == "cifar10") {
    shape = {3, 32, 32, 10};
  } else {
    return absl::OkStatus();  // the shape is known once the archive is read
  }
  return CatchTorch("checking the spec", [&]() -> absl::Status {
    std::shared_ptr<const ProfiledModel> table;
    ASSIGN_OR_RETURN(table, ZooLayerTable(spec.model(), shape));
    ASSIGN_OR_RETURN(const LayerSelection selection,
                     SelectLayers(spec, table->layers, table->model->UnquantizedLayers()));
    return CheckFeasible(spec, selection.costs);
  });
}

}  // namespace qsearch::search
