// TorchScript models: load, find layers in every block, splice in the quantizer ops, run,
// and export back as TorchScript.
#include "search/script_model.h"

#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include <archive.h>
#include <archive_entry.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/library.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_io.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"
#include "search/narrow_conv.h"
#include "search/quantized_checkpoint.h"
#include "search/script_graph.h"

namespace qsearch::search {
namespace {

using torch::jit::Block;
using torch::jit::Node;
using torch::jit::Value;

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
// A quantized layer's convolution, as in zoo layers (search/narrow_conv.h).
at::Tensor ConvOp(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::int64_t groups) {
  return LayerConv2d(x, w, bias.value_or(at::Tensor()), stride, padding, dilation, groups);
}
at::Tensor ObserveOp(const at::Tensor& y, std::int64_t id) {
  LayerFor(id).RecordOutput(y);
  return y;
}

}  // namespace

TORCH_LIBRARY(qsearch, m) {
  m.def("quant_weight(Tensor w, int layer) -> Tensor");
  m.def("quant_input(Tensor x, int layer) -> Tensor");
  m.def("observe(Tensor y, int layer) -> Tensor");
  m.def("conv2d(Tensor x, Tensor w, Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups) -> Tensor");
}
TORCH_LIBRARY_IMPL(qsearch, CompositeImplicitAutograd, m) {
  m.impl("quant_weight", &QuantWeightOp);
  m.impl("quant_input", &QuantInputOp);
  m.impl("observe", &ObserveOp);
  m.impl("conv2d", &ConvOp);
}

namespace {

// The last line of a TorchScript error that says what went wrong ("RuntimeError: ..."),
// without the interpreter's traceback.
std::string ModelErrorMessage(const std::string& what) {
  std::vector<std::string> lines = absl::StrSplit(what, '\n', absl::SkipWhitespace());
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (absl::StrContains(*it, "Error: ")) return std::string(absl::StripAsciiWhitespace(*it));
  }
  return lines.empty() ? what : lines.front();
}

class ScriptModel : public QuantModel {
 public:
  ~ScriptModel() override {
    Registry& r = TheRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (const Layer& l : layers_) r.layers.erase(l.id);
  }
  at::Tensor forward(const at::Tensor& x) override { return module_.forward({x}).toTensor(); }
  int UnsyncedBatchNorms() const override {
    int n = 0;
    for (const auto& b : module_.named_buffers(/*recurse=*/true)) {
      n += absl::EndsWith(b.name, "running_mean") ? 1 : 0;
    }
    return n;
  }
  void train(bool on = true) override {
    torch::nn::Module::train(on);
    module_.train(on);
  }
  std::vector<NamedLayer> QuantLayers() override {
    std::vector<NamedLayer> out;
    for (const Layer& l : layers_) out.emplace_back(l.name, l.layer);
    return out;
  }
  std::vector<UnquantizedLayer> UnquantizedLayers() const override { return unquantized_; }
  std::vector<std::string> Warnings() const override { return warnings_; }
  std::map<std::string, at::Tensor> DeployState(const std::map<std::string, at::Tensor>& fake_quantized) override {
    std::map<std::string, at::Tensor> state;
    for (const auto& p : module_.named_parameters(/*recurse=*/true)) state[p.name] = p.value.detach();
    for (const auto& b : module_.named_buffers(/*recurse=*/true)) state[b.name] = b.value.detach();
    const Parameters params(module_);
    for (const Layer& l : layers_) {
      auto fq = fake_quantized.find(l.name);
      if (fq == fake_quantized.end()) continue;
      // Every path that names the weight (a module registered twice) gets the new value.
      for (const auto& [path, canonical] : params.canonical) {
        if (canonical == l.param) state[path] = fq->second;
      }
    }
    return state;
  }

  struct Layer {
    std::string name;   // module path
    std::string param;  // weight parameter path
    std::shared_ptr<QuantLayer> layer;
    std::int64_t id;    // registry id the spliced ops carry
  };
  torch::jit::Module module_;    // rewritten: runs with the quantizer ops
  torch::jit::Module pristine_;  // as loaded: the base of the export
  std::vector<Layer> layers_;
  std::vector<UnquantizedLayer> unquantized_;
  std::vector<std::string> warnings_;
};

absl::Status CheckForwardSignature(const torch::jit::Module& m, const std::string& path) {
  if (!m.find_method("forward")) return absl::InvalidArgumentError(absl::StrCat(path, " has no forward method"));
  const auto& args = m.get_method("forward").function().getSchema().arguments();
  int required = 0;
  for (size_t i = 1; i < args.size(); ++i) required += args[i].default_value().has_value() ? 0 : 1;
  if (args.size() < 2 || required > 1) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": forward takes ", args.size() - 1, " inputs (",
                                                   required, " without defaults); qsearch calls it with one "
                                                   "batch of images"));
  }
  return absl::OkStatus();
}

// A convolution node with integer-list padding (input, weight, bias, stride, padding,
// dilation, then groups for conv2d; transposed, output_padding, groups for the traced
// forms) replaced by qsearch::conv2d on the same inputs; other nodes as they are.
Node* AsQsearchConv(torch::jit::Graph& graph, Node* n) {
  namespace aten = torch::jit::aten;
  size_t groups = 0;
  if (n->kind() == aten::conv2d) groups = 6;
  if (n->kind() == aten::_convolution || n->kind() == aten::convolution) groups = 8;
  if (groups == 0 || n->inputs().size() <= groups) return n;
  const c10::TypePtr int_list = c10::ListType::ofInts();
  for (size_t i = 3; i <= 5; ++i) {
    if (!n->input(i)->type()->isSubtypeOf(*int_list)) return n;  // e.g. conv2d's padding="same"
  }
  Value* y = graph.insert(c10::Symbol::fromQualString("qsearch::conv2d"),
                          {n->input(0), n->input(1), n->input(2), n->input(3), n->input(4), n->input(5),
                           n->input(groups)});
  n->output()->replaceAllUsesWith(y);
  n->destroy();
  return y->node();
}

// Splices the quantizer ops around every site and registers the layers on `model`.
void SpliceLayers(ScriptModel& model, torch::jit::Graph& graph, const Scan& scan, const Parameters& params) {
  const auto op = [](const char* name) { return c10::Symbol::fromQualString(absl::StrCat("qsearch::", name)); };
  std::map<std::string, std::int64_t> id_of;  // parameter -> layer id
  for (const Site& site : scan.sites) {
    auto [it, fresh] = id_of.emplace(site.param, 0);
    if (fresh) {
      ScriptModel::Layer l{LayerName(site.param), site.param,
                           std::make_shared<QuantLayer>(params.by_path.at(site.param)), 0};
      Registry& r = TheRegistry();
      {
        std::lock_guard<std::mutex> lock(r.mu);
        l.id = r.next++;
        r.layers[l.id] = l.layer.get();
      }
      // Registered by position: module paths may hold characters torch::nn names may not.
      model.register_module(absl::StrCat("layer", model.layers_.size()), l.layer);
      it->second = l.id;
      model.layers_.push_back(std::move(l));
    }
    Node* n = site.node;
    {
      torch::jit::WithInsertPoint guard(n);
      Value* idv = graph.insertConstant(it->second);
      n->replaceInput(0, graph.insert(op("quant_input"), {n->input(0), idv}));
      n->replaceInput(1, graph.insert(op("quant_weight"), {n->input(1), idv}));
      n = AsQsearchConv(graph, n);
    }
    {
      torch::jit::WithInsertPoint guard(n->next());
      Value* idv = graph.insertConstant(it->second);
      Value* observed = graph.insert(op("observe"), {n->output(), idv});
      n->output()->replaceAllUsesAfterNodeWith(observed->node(), observed);
    }
  }
  // The model's other parameters and its buffers join the torch::nn side by position,
  // sharing storage, so optimisers and checkpoints see the whole model, each tensor once.
  std::set<const void*> seen;
  for (const ScriptModel::Layer& l : model.layers_) seen.insert(l.layer->weight().unsafeGetTensorImpl());
  int k = 0;
  for (const auto& p : model.module_.named_parameters(/*recurse=*/true)) {
    if (seen.insert(p.value.unsafeGetTensorImpl()).second) model.register_parameter(absl::StrCat("param", k++), p.value);
  }
  k = 0;
  for (const auto& b : model.module_.named_buffers(/*recurse=*/true)) {
    if (seen.insert(b.value.unsafeGetTensorImpl()).second) model.register_buffer(absl::StrCat("buffer", k++), b.value);
  }
}

// Float layers the scan found, and warnings about the model.
void Report(ScriptModel& model, const Scan& scan, const Parameters& params, int frozen_parameters) {
  std::set<std::string> quantized;
  for (const auto& l : model.layers_) quantized.insert(l.param);
  for (const auto& [name, u] : scan.unsupported) model.unquantized_.push_back(u);
  for (const auto& [param, calls] : scan.computed_weight_uses) {
    if (quantized.count(param)) {
      model.warnings_.push_back(absl::StrCat(
          "parameter '", param, "' is quantized where it is used directly, but ", calls,
          " convolution or linear call(s) use a weight computed from it (e.g. a slice); those calls see it "
          "unquantized"));
      continue;
    }
    UnquantizedLayer u;
    u.name = LayerName(param);
    u.kind = "computed weight";
    u.params = params.by_path.at(param).numel();
    u.reason = absl::StrCat("the weight of ", calls, " convolution or linear call(s) is computed from parameter '",
                            param, "' in the model's code (e.g. a slice or weight norm); kept in float");
    model.unquantized_.push_back(std::move(u));
  }
  int batchnorm[2] = {0, 0};  // frozen in eval mode, in train mode
  for (const FrozenFlag& f : scan.frozen) batchnorm[f.value ? 1 : 0] += f.batchnorm ? 1 : 0;
  for (const bool train : {false, true}) {
    if (batchnorm[train] == 0) continue;
    model.warnings_.push_back(absl::StrCat(
        "the model was traced in ", train ? "train" : "eval", " mode, which fixed its ", batchnorm[train],
        " batch norm(s) to ", train ? "batch statistics even when evaluating" : "running statistics even when training",
        "; qsearch lets them follow train/eval mode as in a scripted model (batch statistics while training, "
        "running statistics when evaluating), and the exported model uses the running statistics the search "
        "updated"));
  }
  if (frozen_parameters > 0) {
    model.warnings_.push_back(absl::StrCat(frozen_parameters,
                                           " parameter(s) were saved with requires_grad=False; qsearch "
                                           "fine-tunes every parameter of the model"));
  }
}


// Loading a TorchScript archive runs the __setstate__ methods its code defines: such a
// model would run code before any vetting, so it is refused unread.
absl::Status CheckNoLoadTimeCode(const std::string& path) {
  struct archive* a = archive_read_new();
  archive_read_support_format_zip(a);
  absl::Status status;
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) == ARCHIVE_OK) {
    struct archive_entry* entry;
    constexpr la_int64_t kMaxCode = 64 << 20;
    while (status.ok() && archive_read_next_header(a, &entry) == ARCHIVE_OK) {
      const char* name = archive_entry_pathname(entry);
      const la_int64_t size = archive_entry_size(entry);
      if (name == nullptr || !absl::EndsWith(name, ".py") || size <= 0 || size > kMaxCode) continue;
      std::string code(static_cast<size_t>(size), '\0');
      if (archive_read_data(a, code.data(), code.size()) != size) break;
      if (absl::StrContains(code, "def __setstate__")) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "the model defines __setstate__ (", name, "): code that runs when the file is loaded, which qsearch "
            "refuses; save the model without a custom __setstate__"));
      }
    }
  }
  archive_read_free(a);
  return status;
}

// Loads `path` as TorchScript after the load-time check; the message says how to save one.
absl::StatusOr<torch::jit::Module> LoadVetted(const std::string& path) {
  RETURN_IF_ERROR(CheckNoLoadTimeCode(path));
  auto loaded = CatchTorch("loading TorchScript model", [&] { return torch::jit::load(path); });
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a TorchScript archive (save the model with ",
                                                   "torch.jit.save after torch.jit.script or torch.jit.trace): ",
                                                   loaded.status().message()));
  }
  return *loaded;
}

}  // namespace

absl::Status CheckScriptModel(const std::string& path) {
  ASSIGN_OR_RETURN(torch::jit::Module m, LoadVetted(path));
  RETURN_IF_ERROR(CheckForwardSignature(m, path));
  return CatchTorch("vetting the model", [&]() -> absl::Status {
    std::shared_ptr<torch::jit::Graph> graph = m.get_method("forward").graph()->copy();
    torch::jit::Inline(*graph);
    return VetGraph(*graph);
  });
}

absl::StatusOr<std::shared_ptr<QuantModel>> LoadScriptModel(const std::string& path, const ModelShape& shape) {
  ASSIGN_OR_RETURN(const torch::jit::Module loaded, LoadVetted(path));
  RETURN_IF_ERROR(CheckForwardSignature(loaded, path));
  std::shared_ptr<ScriptModel> model(new ScriptModel());
  int frozen = 0;
  RETURN_IF_ERROR(CatchTorch("preparing the TorchScript model", [&] {
    // Cloning a parameter that requires grad under autograd gives a non-leaf tensor that
    // no optimiser takes; clone without autograd, then let every parameter train.
    torch::NoGradGuard no_grad;
    model->module_ = loaded.clone();
    model->pristine_ = loaded.clone();
    for (const auto& p : loaded.named_parameters(/*recurse=*/true)) frozen += p.value.requires_grad() ? 0 : 1;
    for (const auto& p : model->module_.named_parameters(/*recurse=*/true)) p.value.requires_grad_(true);
  }));
  torch::jit::Module& m = model->module_;
  std::shared_ptr<torch::jit::Graph> graph = m.get_method("forward").graph();
  torch::jit::Inline(*graph);
  // Nothing of the model runs before its graph passes.
  RETURN_IF_ERROR(CatchTorch("vetting the model", [&] { return VetGraph(*graph); }));
  const Parameters params(m);
  // Find the layers first, then splice: editing while walking would visit new nodes.
  const Scan scan = ScanGraph(*graph, params);
  if (scan.sites.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " has no quantizable layer: no conv2d or linear in its forward uses one of its own parameters "
              "as the weight"));
  }
  SpliceLayers(*model, *graph, scan, params);
  // Tracing froze batch norm and dropout in the mode the model was in: let them follow
  // the module's train/eval mode again, so a traced model trains as a scripted one does.
  for (const FrozenFlag& f : scan.frozen) {
    torch::jit::WithInsertPoint guard(f.node);
    f.node->replaceInput(f.input, graph->insertGetAttr(graph->inputs()[0], "training"));
  }
  Report(*model, scan, params, frozen);

  // One eval-mode pass on a zero batch checks the input shape and the output (eval, so a
  // trained model's batch-norm statistics stay as they are); Profile later fills in the
  // layer table with real data.
  m.eval();
  model->eval();
  c10::IValue out;
  try {
    torch::NoGradGuard no_grad;
    out = m.forward({at::zeros({2, shape.channels, shape.height, shape.width})});
  } catch (const std::exception& e) {
    const std::string what = dynamic_cast<const c10::Error*>(&e) != nullptr
                                 ? static_cast<const c10::Error&>(e).what_without_backtrace()
                                 : e.what();
    return absl::InvalidArgumentError(absl::StrCat(path, " does not accept ", shape.channels, "x", shape.height, "x",
                                                   shape.width, " images (the data set's shape): ",
                                                   ModelErrorMessage(what)));
  }
  if (!out.isTensor()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " returns a ", out.tagKind(), " (", out.type()->str(), ")",
                                                   "; qsearch needs a classifier whose forward returns one tensor of "
                                                   "logits [batch, ", shape.classes, "]"));
  }
  const at::Tensor logits = out.toTensor();
  if (logits.dim() != 2 || logits.size(0) != 2 || logits.size(1) != shape.classes) {
    return absl::InvalidArgumentError(absl::StrCat(path, " returns shape [", absl::StrJoin(logits.sizes(), ", "),
                                                   "] for a batch of 2; a classifier for the data set returns [2, ",
                                                   shape.classes, "]"));
  }
  return std::shared_ptr<QuantModel>(model);
}

bool IsScriptModel(const QuantModel& model) { return dynamic_cast<const ScriptModel*>(&model) != nullptr; }

absl::Status ExportTorchScript(QuantModel& model, const std::string& path, const std::vector<double>& mean,
                               const std::vector<double>& std) {
  auto* script = dynamic_cast<ScriptModel*>(&model);
  if (script == nullptr) return absl::InvalidArgumentError("only TorchScript models export as TorchScript");
  // Check and collect every layer's quantizers before touching the copy.
  std::map<std::string, at::Tensor> fake_quantized;
  std::map<std::string, AffineActivation> inputs;
  for (const ScriptModel::Layer& l : script->layers_) {
    if (l.layer->mode() == QuantMode::kFloat) continue;  // excluded: stays float
    if (l.layer->mode() != QuantMode::kFixed) return absl::InvalidArgumentError("export needs the model's final (fixed) policy");
    ASSIGN_OR_RETURN(fake_quantized[l.name], FakeQuantizedWeight(*l.layer));
    ASSIGN_OR_RETURN(inputs[l.param], InputQuantizerAsAffine(*l.layer, l.name));
  }
  return CatchTorch("exporting TorchScript", [&]() -> absl::Status {
    torch::NoGradGuard ng;
    torch::jit::Module out = script->pristine_.clone();
    out.eval();
    // Everything the job trained (weights, biases, buffers such as BN statistics) comes
    // from the rewritten module, whose tensors the search updated in place.
    for (const auto& [name, value] : script->DeployState(fake_quantized)) {
      std::vector<std::string> parts = absl::StrSplit(name, '.');
      torch::jit::Module owner = out;
      for (size_t k = 0; k + 1 < parts.size(); ++k) owner = owner.attr(parts[k]).toModule();
      owner.setattr(parts.back(), value.detach().clone());
    }
    std::shared_ptr<torch::jit::Graph> graph = out.get_method("forward").graph();
    torch::jit::Inline(*graph);
    const Scan scan = ScanGraph(*graph, Parameters(out));
    // An inference model: batch norm on running statistics, no dropout, however traced.
    for (const FrozenFlag& f : scan.frozen) {
      if (!f.value) continue;
      torch::jit::WithInsertPoint guard(f.node);
      f.node->replaceInput(f.input, graph->insertConstant(false));
    }
    for (const Site& site : scan.sites) {
      auto q = inputs.find(site.param);
      if (q == inputs.end() || q->second.identity) continue;
      const AffineActivation& a = q->second;
      Node* n = site.node;
      torch::jit::WithInsertPoint guard(n);
      // Divide by a one-element tensor, not a scalar: ATen turns division by a scalar into
      // multiplication by its reciprocal, which rounds differently at level boundaries
      // than the training kernel's true division.
      Value* divisor = graph->insertConstant(at::full({1}, a.scale, at::kFloat));
      Value* v = graph->insert(torch::jit::aten::div, {n->input(0), divisor});
      v = graph->insert(torch::jit::aten::add, {v, a.zero});
      v = graph->insert(torch::jit::aten::clamp, {v, a.lo, a.hi});
      v = graph->insert(torch::jit::aten::round, {v});
      v = graph->insert(torch::jit::aten::sub, {v, a.zero});
      v = graph->insert(torch::jit::aten::mul, {v, a.scale});
      n->replaceInput(0, v);
    }
    if (!mean.empty()) {
      // Raw images in: the same (x - mean) / std the data loader applied, in float32.
      const auto channels = static_cast<std::int64_t>(mean.size());
      Value* x = graph->inputs()[1];
      torch::jit::WithInsertPoint guard(graph->nodes().front());
      Value* m = graph->insertConstant(at::tensor(std::vector<float>(mean.begin(), mean.end())).reshape({1, channels, 1, 1}));
      Value* s = graph->insertConstant(at::tensor(std::vector<float>(std.begin(), std.end())).reshape({1, channels, 1, 1}));
      Value* centred = graph->insert(torch::jit::aten::sub, {x, m});
      Value* normalised = graph->insert(torch::jit::aten::div, {centred, s});
      x->replaceAllUsesAfterNodeWith(normalised->node(), normalised);
    }
    // LibTorch writes the file; then it is flushed and moved into place like every artifact.
    const std::string tmp = path + ".tmp";
    out.save(tmp);
    RETURN_IF_ERROR(SyncPath(tmp));
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) return ErrnoStatus("moving the TorchScript export into place", ec.value());
    return SyncPath(std::filesystem::path(path).parent_path().string());
  });
}

}  // namespace qsearch::search
