// ScriptModel: a user's TorchScript model (torch.jit.script / torch.jit.trace, saved with
// torch.jit.save) searched like a zoo model.
//
// Mechanism: graph rewriting around the model's own parameters. The forward graph is
// inlined; every aten::conv2d / aten::linear / aten::_convolution whose weight is a
// parameter of the model (a prim::GetAttr chain from `self`) becomes a quantizable layer.
// Three ops of our own are spliced around each such call:
//   x' = qsearch::quant_input(x, id)    the layer's activation quantizer (any mode)
//   w' = qsearch::quant_weight(w, id)   the layer's weight quantizer (any mode)
//   y' = qsearch::observe(y, id)        identity; records MACs while profiling
// `id` names a QuantLayer (sharing the parameter tensor, so the optimiser trains the
// model's own weights) in a process-wide registry. The ops are CompositeImplicitAutograd,
// so autograd flows through the quantizers exactly as in zoo models, and the composite
// trick holds: the model's one convolution runs on the mixed weight and mixed input.
#ifndef QSEARCH_SEARCH_SCRIPT_MODEL_H_
#define QSEARCH_SEARCH_SCRIPT_MODEL_H_

#include <memory>
#include <string>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "search/models.h"

namespace qsearch::search {

class ScriptModel : public QuantModel {
 public:
  ~ScriptModel() override;
  at::Tensor forward(const at::Tensor& x) override;
  void train(bool on = true) override;

 private:
  friend absl::StatusOr<std::shared_ptr<QuantModel>> LoadScriptModel(const std::string&, const ModelShape&);
  friend absl::Status ExportTorchScript(QuantModel&, const std::string&);
  ScriptModel() = default;
  torch::jit::Module module_;    // rewritten: runs with the quantizer ops
  torch::jit::Module pristine_;  // as loaded: the base of the export
  std::vector<std::int64_t> ids_;  // registry ids of this model's layers
  std::vector<std::string> params_;  // each layer's weight parameter path, in layer order
};

// Loads `path` and prepares it for search on inputs of `shape` (channels x height x width),
// checking it with one forward pass on a zero batch. InvalidArgument, naming the problem,
// for: not a TorchScript archive, no forward method, an input shape the model rejects, an
// output that is not [batch, classes], no quantizable layer.
absl::StatusOr<std::shared_ptr<QuantModel>> LoadScriptModel(const std::string& path, const ModelShape& shape);

// Writes the searched model as TorchScript that plain PyTorch loads with torch.jit.load
// and runs with no qsearch code: each quantized layer's weight parameter holds its
// fake-quantized values, and its input passes through the activation quantizer written
// as ATen ops, (round(clamp(x / s + z, lo, hi)) - z) * s. `model` must come from
// LoadScriptModel and be in fixed mode; InvalidArgument otherwise.
absl::Status ExportTorchScript(QuantModel& model, const std::string& path);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_SCRIPT_MODEL_H_
