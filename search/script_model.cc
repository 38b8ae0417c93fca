// TorchScript models: load, find layers, splice in the quantizer ops, run.
#include "search/script_model.h"

#include <map>
#include <set>
#include <mutex>

#include <torch/csrc/jit/passes/inliner.h>
#include <torch/library.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "quantizers/point_kernel.h"
#include "quantizers/torch_status.h"

namespace qsearch::search {
namespace {

// Process-wide: the ops find their layer by id. Ids are never reused.
struct Registry {
  std::mutex mu;
  std::map<std::int64_t, QuantLayer*> layers;
  std::int64_t next = 1;
};
Registry& TheRegistry() {
  static Registry* r = new Registry;
  return *r;
}

QuantLayer& LayerFor(std::int64_t id) {
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.layers.find(id);
  TORCH_CHECK(it != r.layers.end(), "qsearch: no quantized layer ", id, " (its model was released)");
  return *it->second;
}

at::Tensor QuantWeightOp(const at::Tensor& w, std::int64_t id) { return LayerFor(id).QuantizeWeight(w); }
at::Tensor QuantInputOp(const at::Tensor& x, std::int64_t id) { return LayerFor(id).QuantizeInput(x); }
at::Tensor ObserveOp(const at::Tensor& y, std::int64_t id) {
  LayerFor(id).RecordOutput(y);
  return y;
}

}  // namespace

TORCH_LIBRARY(qsearch, m) {
  m.def("quant_weight(Tensor w, int layer) -> Tensor");
  m.def("quant_input(Tensor x, int layer) -> Tensor");
  m.def("observe(Tensor y, int layer) -> Tensor");
}
TORCH_LIBRARY_IMPL(qsearch, CompositeImplicitAutograd, m) {
  m.impl("quant_weight", &QuantWeightOp);
  m.impl("quant_input", &QuantInputOp);
  m.impl("observe", &ObserveOp);
}

namespace {

// The module path of a parameter read by a prim::GetAttr chain from the graph's `self`,
// or "" when `v` is anything else.
std::string ParameterPath(torch::jit::Value* v, torch::jit::Value* self) {
  std::vector<std::string> names;
  while (v != self) {
    torch::jit::Node* n = v->node();
    if (n->kind() != torch::jit::prim::GetAttr) return "";
    names.push_back(n->s(torch::jit::attr::name));
    v = n->input(0);
  }
  std::reverse(names.begin(), names.end());
  return absl::StrJoin(names, ".");
}

struct Site {
  torch::jit::Node* node;
  std::string param;
};

// The conv2d / linear calls whose weight is one of `params`, in graph order.
std::vector<Site> FindSites(torch::jit::Graph& graph, const std::map<std::string, at::Tensor>& params) {
  torch::jit::Value* self = graph.inputs()[0];
  std::vector<Site> sites;
  for (torch::jit::Node* n : graph.nodes()) {
    const auto kind = n->kind();
    if (kind != torch::jit::aten::conv2d && kind != torch::jit::aten::linear && kind != torch::jit::aten::_convolution) {
      continue;
    }
    const std::string p = ParameterPath(n->input(1), self);
    auto it = params.find(p);
    if (p.empty() || it == params.end()) continue;
    if (it->second.dim() != 4 && it->second.dim() != 2) continue;
    sites.push_back({n, p});
  }
  return sites;
}

}  // namespace

ScriptModel::~ScriptModel() {
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (std::int64_t id : ids_) r.layers.erase(id);
}

at::Tensor ScriptModel::forward(const at::Tensor& x) { return module_.forward({x}).toTensor(); }

void ScriptModel::train(bool on) {
  torch::nn::Module::train(on);
  module_.train(on);
}

absl::StatusOr<std::shared_ptr<QuantModel>> LoadScriptModel(const std::string& path, const ModelShape& shape) {
  std::shared_ptr<ScriptModel> model(new ScriptModel());
  auto loaded = CatchTorch("loading TorchScript model", [&] { return torch::jit::load(path); });
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a TorchScript archive (save the model with ",
                                                   "torch.jit.save after torch.jit.script or torch.jit.trace): ",
                                                   loaded.status().message()));
  }
  model->module_ = loaded->clone();
  model->pristine_ = loaded->clone();
  torch::jit::Module& m = model->module_;
  if (!m.find_method("forward")) return absl::InvalidArgumentError(absl::StrCat(path, " has no forward method"));
  std::shared_ptr<torch::jit::Graph> graph = m.get_method("forward").graph();
  torch::jit::Inline(*graph);

  std::map<std::string, at::Tensor> params;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) params[p.name] = p.value;
  // Find the layers first, then splice: editing while walking would visit new nodes.
  const std::vector<Site> sites = FindSites(*graph, params);
  for (const Site& site : sites) model->params_.push_back(site.param);
  if (sites.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " has no quantizable layer: no conv2d or linear in its forward uses one of its own parameters "
              "as the weight"));
  }
  const auto op = [](const char* name) { return c10::Symbol::fromQualString(absl::StrCat("qsearch::", name)); };
  std::set<std::string> seen;
  for (const Site& site : sites) {
    std::string name = site.param;
    if (absl::EndsWith(name, ".weight")) name.resize(name.size() - 7);
    if (!seen.insert(name).second) name = absl::StrCat(name, "_", seen.size());  // a weight used twice
    auto layer = std::make_shared<QuantLayer>(params[site.param]);
    std::int64_t id;
    {
      Registry& r = TheRegistry();
      std::lock_guard<std::mutex> lock(r.mu);
      id = r.next++;
      r.layers[id] = layer.get();
    }
    model->ids_.push_back(id);
    model->register_module(absl::StrReplaceAll(name, {{".", "_"}}), layer);
    torch::jit::Node* n = site.node;
    {
      torch::jit::WithInsertPoint guard(n);
      torch::jit::Value* idv = graph->insertConstant(id);
      n->replaceInput(0, graph->insert(op("quant_input"), {n->input(0), idv}));
      n->replaceInput(1, graph->insert(op("quant_weight"), {n->input(1), idv}));
    }
    {
      torch::jit::WithInsertPoint guard(n->next());
      torch::jit::Value* idv = graph->insertConstant(id);
      torch::jit::Value* observed = graph->insert(op("observe"), {n->output(), idv});
      n->output()->replaceAllUsesAfterNodeWith(observed->node(), observed);
    }
  }
  // The model's other parameters and its buffers join this module by name, sharing
  // storage, so optimisers, checkpoints and exports see the whole model.
  std::set<std::string> quantized;
  for (const Site& s : sites) quantized.insert(s.param);
  for (const auto& [name, t] : params) {
    if (!quantized.count(name)) model->register_parameter(absl::StrCat("script_", absl::StrReplaceAll(name, {{".", "_"}})), t);
  }
  for (const auto& b : m.named_buffers(/*recurse=*/true)) {
    model->register_buffer(absl::StrCat("script_", absl::StrReplaceAll(b.name, {{".", "_"}})), b.value);
  }
  // One pass on a zero batch checks the input shape and the output; Profile later fills in
  // the layer table with real data.
  auto out = CatchTorch("running the model", [&] {
    torch::NoGradGuard ng;
    return model->forward(at::zeros({2, shape.channels, shape.height, shape.width}));
  });
  if (!out.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " does not accept ", shape.channels, "x", shape.height, "x",
                                                   shape.width, " images (the data set's shape): ",
                                                   out.status().message()));
  }
  if (out->dim() != 2 || out->size(0) != 2 || out->size(1) != shape.classes) {
    return absl::InvalidArgumentError(absl::StrCat(path, " returns shape [", absl::StrJoin(out->sizes(), ", "),
                                                   "] for a batch of 2; a classifier for the data set returns [2, ",
                                                   shape.classes, "]"));
  }
  return std::shared_ptr<QuantModel>(model);
}

absl::Status ExportTorchScript(QuantModel& model, const std::string& path) {
  auto* script = dynamic_cast<ScriptModel*>(&model);
  if (script == nullptr) return absl::InvalidArgumentError("only TorchScript models export as TorchScript");
  auto layers = model.QuantLayers();
  return CatchTorch("exporting TorchScript", [&]() -> absl::Status {
    torch::NoGradGuard ng;
    const bool was_training = model.is_training();
    model.eval();
    torch::jit::Module out = script->pristine_.clone();
    out.eval();
    // Everything the job trained (biases, other parameters, buffers such as BN statistics)
    // comes from the rewritten module, whose tensors the search updated in place.
    auto set = [&](const std::string& path, const at::Tensor& value) {
      std::vector<std::string> parts = absl::StrSplit(path, '.');
      torch::jit::Module owner = out;
      for (size_t k = 0; k + 1 < parts.size(); ++k) owner = owner.attr(parts[k]).toModule();
      owner.setattr(parts.back(), value.detach().clone());
    };
    for (const auto& p : script->module_.named_parameters(/*recurse=*/true)) set(p.name, p.value);
    for (const auto& b : script->module_.named_buffers(/*recurse=*/true)) set(b.name, b.value);
    std::shared_ptr<torch::jit::Graph> graph = out.get_method("forward").graph();
    torch::jit::Inline(*graph);
    std::map<std::string, at::Tensor> params;
    for (const auto& p : out.named_parameters(/*recurse=*/true)) params[p.name] = p.value;
    const std::vector<Site> sites = FindSites(*graph, params);
    if (sites.size() != layers.size()) return absl::InternalError("the model's layers changed since it was loaded");
    // Layers are registered in site order; a layer's position matches its site.
    for (size_t i = 0; i < sites.size(); ++i) {
      QuantLayer& layer = *layers[i].second;
      if (layer.mode() == QuantMode::kFloat) continue;  // excluded: stays float
      if (layer.mode() != QuantMode::kFixed) {
        return absl::InvalidArgumentError("export needs the model's final (fixed) policy");
      }
      // The weight: its fake-quantized values, in place of the parameter.
      set(sites[i].param, layer.QuantizeWeight(layer.weight()));
      // The input: the activation quantizer's eval-mode affine map as ATen ops.
      quantizers::PointForm form = layer.fixed_act_quantizer()->Prepare(at::zeros({1}));
      if (form.kind == quantizers::PointKind::kIdentity) continue;
      if (form.kind != quantizers::PointKind::kAffine || form.table.size(0) != 1) {
        return absl::UnimplementedError(absl::StrCat("layer ", layers[i].first, ": activation scheme '",
                                                     layer.act_spec(), "' has no TorchScript export"));
      }
      const at::Tensor row = form.table[0];
      const double scale = row[0].item<double>(), zero = row[1].item<double>();
      const double lo = row[2].item<double>(), hi = row[3].item<double>();
      torch::jit::Node* n = sites[i].node;
      torch::jit::WithInsertPoint guard(n);
      // Divide by a one-element tensor, not a scalar: ATen turns division by a scalar into
      // multiplication by its reciprocal, which rounds differently at level boundaries
      // than the training kernel's true division.
      torch::jit::Value* divisor = graph->insertConstant(at::full({1}, scale, at::kFloat));
      torch::jit::Value* v = graph->insert(torch::jit::aten::div, {n->input(0), divisor});
      v = graph->insert(torch::jit::aten::add, {v, zero});
      v = graph->insert(torch::jit::aten::clamp, {v, lo, hi});
      v = graph->insert(torch::jit::aten::round, {v});
      v = graph->insert(torch::jit::aten::sub, {v, zero});
      v = graph->insert(torch::jit::aten::mul, {v, scale});
      n->replaceInput(0, v);
    }
    model.train(was_training);
    out.save(path);
    return absl::OkStatus();
  });
}

}  // namespace qsearch::search
