// A user's TorchScript model (torch.jit.script or torch.jit.trace, saved with
// torch.jit.save from Python or C++) searched like a zoo model.
//
// Mechanism: graph rewriting around the model's own parameters. The forward graph is
// inlined and every block is scanned, including the bodies of `if` and loops; every
// aten::conv2d / aten::linear / non-transposed aten::_convolution whose weight is one of
// the model's parameters (a prim::GetAttr chain from `self`) is a call site of a
// quantizable layer. A parameter used at several sites (a shared module, a loop body, a
// traced loop unrolled) is ONE layer, named by its module path as PyTorch prints it
// ("layer1.0.conv1", "features.3.conv.1.0"; a parameter used directly keeps its own path,
// "head.w"). Three ops of our own are spliced around each site:
//   x' = qsearch::quant_input(x, id)    the layer's activation quantizer (any mode)
//   w' = qsearch::quant_weight(w, id)   the layer's weight quantizer (any mode)
//   y' = qsearch::observe(y, id)        identity; records MACs while profiling
// and a convolution site with integer padding becomes qsearch::conv2d (the same
// arguments; NarrowConv2d for a one-channel input that needs a gradient, as in zoo
// models, else LibTorch's conv2d).
// `id` names a QuantLayer (sharing the parameter tensor, so the optimiser trains the
// model's own weights) in a process-wide registry. The ops are CompositeImplicitAutograd,
// so autograd flows through the quantizers exactly as in zoo models, and the composite
// trick holds: the model's one convolution runs on the mixed weight and mixed input.
//
// Traced models: tracing freezes batch norm and dropout in the mode the model was traced
// in (a constant `training` argument). The searched copy reads the module's `training`
// attribute there instead, so traced models train like scripted ones; the export pins
// them to inference (running statistics, no dropout). A warning says so.
//
// Never silent: a conv1d / conv3d / transposed convolution on one of the model's
// parameters is an UnquantizedLayer the spec must exclude by name (else the job fails
// naming it and its line of code); a convolution whose weight is computed from a
// parameter (a slice, weight norm) is listed as a float layer with the reason.
#ifndef QSEARCH_SEARCH_SCRIPT_MODEL_H_
#define QSEARCH_SEARCH_SCRIPT_MODEL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "search/models.h"

namespace qsearch::search {

// Loads `path` (refusing what CheckScriptModel refuses, before running anything of it)
// and prepares it for search on inputs of `shape` (channels x height x width), checking
// it with one eval-mode forward pass on a zero batch. Every parameter trains,
// whatever requires_grad it was saved with. InvalidArgument, naming the problem, for: not
// a TorchScript archive, no forward method or one that needs more than the image batch,
// an input shape the model rejects, an output that is not a tensor [batch, classes], no
// quantizable layer.
absl::StatusOr<std::shared_ptr<QuantModel>> LoadScriptModel(const std::string& path, const ModelShape& shape);

// What LoadScriptModel checks before anything of the model runs: the file is a
// TorchScript archive, its code defines no __setstate__ (which loading would run), its
// forward takes one image batch, and its inlined forward graph passes VetGraph
// (script_graph.h). InvalidArgument naming the problem, the op and its line.
absl::Status CheckScriptModel(const std::string& path);

// True for models from LoadScriptModel.
bool IsScriptModel(const QuantModel& model);

// Writes the searched model as TorchScript that plain PyTorch loads with torch.jit.load
// and runs with no qsearch code on raw images: the input is first normalised,
// (x - mean) / std per channel (one value: every channel; nothing when mean is empty),
// each quantized layer's weight parameter holds its fake-quantized values, and its input
// passes through the activation quantizer written as ATen ops,
// (round(clamp(x / s + z, lo, hi)) - z) * s. `model` must come from LoadScriptModel and be
// in fixed mode; InvalidArgument otherwise.
absl::Status ExportTorchScript(QuantModel& model, const std::string& path, const std::vector<double>& mean,
                               const std::vector<double>& std);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_SCRIPT_MODEL_H_
