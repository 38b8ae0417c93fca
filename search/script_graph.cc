// The forward-graph scan.
#include "search/script_graph.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace qsearch::search {

using torch::jit::Block;
using torch::jit::Node;
using torch::jit::Value;

std::string AttributePath(Value* v, Value* self) {
  std::vector<std::string> names;
  while (v != self) {
    Node* n = v->node();
    if (n->kind() != torch::jit::prim::GetAttr) return "";
    names.push_back(n->s(torch::jit::attr::name));
    v = n->input(0);
  }
  std::reverse(names.begin(), names.end());
  return absl::StrJoin(names, ".");
}

std::string LayerName(const std::string& param) {
  absl::string_view name = param;
  if (absl::ConsumeSuffix(&name, ".weight")) return std::string(name);
  return param;
}

std::string SourceLocation(const Node* n) {
  const torch::jit::SourceRange& range = n->sourceRange();
  const c10::optional<torch::jit::SourceRange> original = range.findSourceRangeThatGenerated();
  const auto where = (original ? *original : range).file_line_col();
  if (!where) return "";
  return absl::StrCat(std::get<0>(*where), ":", std::get<1>(*where));
}

namespace {

enum class OpClass { kNone, kConv2d, kLinear, kUnsupported };

// Ops whose input 1 is a weight qsearch could quantize as a layer.
OpClass Classify(const Node* n) {
  namespace aten = torch::jit::aten;
  const auto kind = n->kind();
  if (kind == aten::conv2d) return OpClass::kConv2d;
  if (kind == aten::linear) return OpClass::kLinear;
  if (kind == aten::_convolution || kind == aten::convolution) {
    // (input, weight, bias, stride, padding, dilation, transposed, ...): traced convs.
    const c10::optional<c10::IValue> transposed = torch::jit::toIValue(n->input(6));
    return transposed && transposed->isBool() && !transposed->toBool() ? OpClass::kConv2d : OpClass::kUnsupported;
  }
  if (kind == aten::conv1d || kind == aten::conv3d || kind == aten::conv_transpose1d ||
      kind == aten::conv_transpose2d || kind == aten::conv_transpose3d || kind == aten::conv_tbc) {
    return OpClass::kUnsupported;
  }
  return OpClass::kNone;
}

// The parameters a value is computed from, looking back through at most `budget` nodes.
void ParametersBehind(Value* v, Value* self, const Parameters& params, std::set<std::string>* found, int* budget) {
  if (--*budget < 0) return;
  if (const std::string p = params.Of(v, self); !p.empty()) {
    found->insert(p);
    return;
  }
  Node* n = v->node();
  if (n->kind() == torch::jit::prim::GetAttr || n->kind() == torch::jit::prim::Param) return;
  for (Value* in : n->inputs()) ParametersBehind(in, self, params, found, budget);
}

// The input of a train/eval-dependent op that says which mode it runs in, or -1.
int TrainingInput(const Node* n) {
  namespace aten = torch::jit::aten;
  const auto kind = n->kind();
  if (kind == aten::batch_norm) return 5;  // (input, weight, bias, mean, var, training, ...)
  if (kind == aten::dropout || kind == aten::feature_dropout || kind == aten::alpha_dropout ||
      kind == aten::feature_alpha_dropout) {
    return 2;  // (input, p, train)
  }
  return -1;
}

void ScanBlock(Block* block, Value* self, const Parameters& params, Scan* scan) {
  for (Node* n : block->nodes()) {
    for (Block* b : n->blocks()) ScanBlock(b, self, params, scan);
    if (const int in = TrainingInput(n); in >= 0) {
      // A constant flag: tracing recorded the mode the model was in.
      if (const auto training = torch::jit::toIValue(n->input(in)); training && training->isBool()) {
        scan->frozen.push_back({n, static_cast<size_t>(in), training->toBool(),
                                n->kind() == torch::jit::aten::batch_norm});
      }
      continue;
    }
    const OpClass op = Classify(n);
    if (op == OpClass::kNone) continue;
    const std::string param = params.Of(n->input(1), self);
    if (!param.empty()) {
      const std::int64_t dim = params.by_path.at(param).dim();
      if ((op == OpClass::kConv2d && dim == 4) || (op == OpClass::kLinear && dim == 2)) {
        scan->sites.push_back({n, param});
        continue;
      }
      const std::string name = LayerName(param);
      const std::string where = SourceLocation(n);
      UnquantizedLayer u;
      u.name = name;
      u.kind = n->kind().toQualString();
      u.params = params.by_path.at(param).numel();
      u.needs_exclusion = true;
      u.reason = absl::StrCat("layer '", name, "' is a ", u.kind, " with a ", dim, "-D weight (",
                              where.empty() ? "" : absl::StrCat("model code ", where, "; "),
                              "qsearch quantizes conv2d and linear only); add \"", name,
                              "\" to excludeOpNames to keep it in float");
      scan->unsupported.emplace(name, std::move(u));
      continue;
    }
    if (op == OpClass::kUnsupported) continue;  // not on a parameter: nothing to quantize
    std::set<std::string> behind;
    int budget = 64;
    ParametersBehind(n->input(1), self, params, &behind, &budget);
    for (const auto& p : behind) ++scan->computed_weight_uses[p];
  }
}

}  // namespace

Scan ScanGraph(torch::jit::Graph& graph, const Parameters& params) {
  Scan scan;
  ScanBlock(graph.block(), graph.inputs()[0], params, &scan);
  return scan;
}

namespace {

// Why `n` may not run, or "" when it may.
std::string Refusal(const Node* n) {
  const c10::Symbol kind = n->kind();
  const std::string name = kind.toQualString();
  static const std::map<std::string, std::string> kDenied = {
      {"aten::from_file", "it reads a file"},
      {"aten::save", "it writes a file"},
      {"aten::set_", "it swaps a tensor's storage"},
      {"prim::Print", "it prints"},
      {"prim::PythonOp", "it calls Python"},
      {"prim::CallFunction", "it calls a function qsearch cannot inline and check"},
      {"prim::CallMethod", "it calls a method qsearch cannot inline and check"},
      {"prim::fork", "it starts a thread"},
      {"prim::forkClosure", "it starts a thread"},
      {"aten::wait", "it waits for a thread"},
      {"prim::rpc_async", "it makes a remote call"},
      {"prim::rpc_sync", "it makes a remote call"},
      {"prim::rpc_remote", "it makes a remote call"},
      {"prim::Enter", "it enters a context manager"},
      {"prim::Exit", "it leaves a context manager"},
  };
  if (auto it = kDenied.find(name); it != kDenied.end()) return it->second;
  if (!kind.is_aten() && !kind.is_prim()) return "only ATen and TorchScript's own ops run";
  if (const c10::FunctionSchema* schema = n->maybeSchema(); schema != nullptr) {
    for (const c10::Argument& a : schema->arguments()) {
      if (a.type()->kind() == c10::TypeKind::StringType &&
          (a.name() == "filename" || a.name() == "path" || a.name() == "file" || a.name() == "f")) {
        return "it takes a file name";
      }
    }
  }
  return "";
}

absl::Status VetBlock(const Block* block) {
  for (const Node* n : block->nodes()) {
    if (const std::string why = Refusal(n); !why.empty()) {
      const std::string where = SourceLocation(n);
      return absl::InvalidArgumentError(absl::StrCat("the model calls ", n->kind().toQualString(),
                                                     where.empty() ? "" : absl::StrCat(" (model code ", where, ")"),
                                                     ", which qsearch does not run: ", why));
    }
    for (const Block* b : n->blocks()) RETURN_IF_ERROR(VetBlock(b));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status VetGraph(const torch::jit::Graph& graph) { return VetBlock(graph.block()); }

}  // namespace qsearch::search
