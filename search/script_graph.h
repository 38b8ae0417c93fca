// Reading a TorchScript model's inlined forward graph (internal to search/, used by
// script_model.cc): which calls are quantizable layers (conv2d / linear on one of the
// model's parameters, in any block), which conv-like calls cannot be quantized, which
// weights are computed from parameters, and where tracing froze train/eval behaviour.
#ifndef QSEARCH_SEARCH_SCRIPT_GRAPH_H_
#define QSEARCH_SEARCH_SCRIPT_GRAPH_H_

#include <map>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/status.h"
#include "search/models.h"

namespace qsearch::search {

// The module path of an attribute read by a prim::GetAttr chain from the graph's `self`,
// or "" when `v` is anything else.
std::string AttributePath(torch::jit::Value* v, torch::jit::Value* self);

// A layer's name: its weight parameter's path without ".weight", as named_modules() names
// the module that owns it; a parameter used directly (F.linear(x, self.w)) keeps its path.
std::string LayerName(const std::string& param);

// Where a node came from in the model's source, "file.py:12", or "" when the archive has
// no debug information.
std::string SourceLocation(const torch::jit::Node* n);

// The model's parameters by path. Paths that name the same tensor (a module registered
// under two names) map to the first path, as PyTorch's named_parameters() reports it.
struct Parameters {
  std::map<std::string, at::Tensor> by_path;
  std::map<std::string, std::string> canonical;  // path -> first path of the same tensor

  explicit Parameters(const torch::jit::Module& m) {
    std::map<const void*, std::string> first;
    for (const auto& p : m.named_parameters(/*recurse=*/true)) {
      by_path[p.name] = p.value;
      canonical[p.name] = first.emplace(p.value.unsafeGetTensorImpl(), p.name).first->second;
    }
  }
  // The canonical path of the parameter `v` reads, or "".
  std::string Of(torch::jit::Value* v, torch::jit::Value* self) const {
    auto it = canonical.find(AttributePath(v, self));
    return it == canonical.end() ? "" : it->second;
  }
};

struct Site {
  torch::jit::Node* node;
  std::string param;  // canonical path of the weight parameter
};

// A batch norm's or dropout's `training` argument that tracing froze to a constant.
struct FrozenFlag {
  torch::jit::Node* node;
  size_t input;
  bool value;
  bool batchnorm;
};

// What a scan of the forward graph finds.
struct Scan {
  std::vector<Site> sites;  // quantizable calls, in graph order
  std::map<std::string, UnquantizedLayer> unsupported;      // by name
  std::map<std::string, int> computed_weight_uses;           // parameter -> calls
  std::vector<FrozenFlag> frozen;
};

// Scans every block of `graph` (the inlined forward of a module whose parameters are
// `params`), in graph order.
Scan ScanGraph(torch::jit::Graph& graph, const Parameters& params);

// The vetting of a user's model before anything runs it: every op of the inlined graph,
// in every block, must be a compute op — ATen (math, nn ops) or TorchScript's own (prim:
// constants, attributes, control flow, lists, tuples) — and none of those that reach
// outside the process: files (aten::from_file, aten::save, any op taking a file name),
// printing (prim::Print), threads and remote calls (prim::fork, aten::wait, rpc), raw
// storage (aten::set_), Python (prim::PythonOp), or a call left uninlined (prim::CallMethod
// on an interface). InvalidArgument naming the op and its line in the model's code.
absl::Status VetGraph(const torch::jit::Graph& graph);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_SCRIPT_GRAPH_H_
