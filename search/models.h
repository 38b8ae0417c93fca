// The built-in model zoo, built from QuantLayers so every Conv2d / Linear can run in any
// quantization mode: mlp, lenet5, resnet20, vgg_small, mobilenetv2_tiny, for 1- or
// 3-channel images of any size >= 8x8 and any number of classes.
#ifndef QSEARCH_SEARCH_MODELS_H_
#define QSEARCH_SEARCH_MODELS_H_

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "absl/status/statusor.h"
#include "quantizers/replicas.h"
#include "search/qlayer.h"

namespace qsearch::search {

// BatchNorm2d over NCHW that can be folded into the convolution feeding it: afterwards the
// convolution carries the affine map and this module passes its input through.
class FoldableBatchNorm : public torch::nn::Module {
 public:
  explicit FoldableBatchNorm(std::int64_t channels);
  at::Tensor forward(const at::Tensor& x);
  // Rewrites `conv`'s weight and bias so conv(x) == bn(conv_old(x)) with the running
  // statistics (eval-mode BN), then stops normalising.
  void FoldInto(QuantLayer& conv);
  bool folded() const { return folded_; }

 private:
  at::Tensor Synced(quantizers::Replicas& r, const at::Tensor& x);
  static constexpr double kEps = 1e-5, kMomentum = 0.1;
  at::Tensor weight_, bias_, running_mean_, running_var_;
  bool folded_ = false;
};

using FoldPair = std::pair<std::shared_ptr<QuantLayer>, std::shared_ptr<FoldableBatchNorm>>;
using NamedLayer = std::pair<std::string, std::shared_ptr<QuantLayer>>;

// A layer of a model that stays in float whatever the spec asks, and why: a TorchScript
// model's convolution qsearch cannot quantize (conv1d, a transposed convolution, a weight
// computed in the model's code). Policies list it as an excluded layer with the reason.
struct UnquantizedLayer {
  std::string name;    // module path, as QuantLayers() names layers
  std::string kind;    // the op, e.g. "aten::conv_transpose2d"
  std::int64_t params = 0;
  std::string reason;
  // A layer the user would expect quantized (a convolution on one of the model's own
  // parameters): the job refuses to run unless the spec keeps it in float by name.
  bool needs_exclusion = false;
};

class QuantModel : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  // Folds every BatchNorm that directly follows a convolution into it (once; later calls
  // do nothing). Returns how many were folded.
  int FoldBatchNorm();
  bool batchnorm_folded() const { return folded_; }
  // Drops model-wide QSS logits once the policy is fixed.
  void DropArchitectureParams() {
    for (const char* name : {"arch_alpha", "arch_beta"}) {
      if (parameters_.contains(name)) parameters_.erase(name);
    }
  }
  // Quantizable layers in forward order, with their module paths ("stage1.0.conv1").
  virtual std::vector<NamedLayer> QuantLayers();
  // Conv/linear-like layers that cannot be quantized (none in the zoo).
  virtual std::vector<UnquantizedLayer> UnquantizedLayers() const { return {}; }
  // What the user should hear about the model that does not stop a job (e.g. batch norms
  // frozen by tracing in eval mode).
  virtual std::vector<std::string> Warnings() const { return {}; }
  // Batch norms whose batch statistics the model's own code computes, which a
  // data-parallel job cannot combine over its processes (a TorchScript model's; the zoo's
  // are synchronised).
  virtual int UnsyncedBatchNorms() const { return 0; }
  // The model's state as its user loads it: parameters and buffers by name, each
  // quantized layer's weight replaced by `fake_quantized[layer name]`, no quantizer state.
  virtual std::map<std::string, at::Tensor> DeployState(const std::map<std::string, at::Tensor>& fake_quantized);
  // Where the model's parameters are (the CPU for a model without any).
  c10::Device device() const;
  // Runs `sample` through the model once, recording each layer's MACs, activation size and
  // input sign. Call once after building, before any quantization mode.
  void Profile(const at::Tensor& sample);

 protected:
  // Declares that `bn` normalises `conv`'s output and nothing else reads it first.
  void FoldsInto(std::shared_ptr<QuantLayer> conv, std::shared_ptr<FoldableBatchNorm> bn) {
    fold_pairs_.emplace_back(std::move(conv), std::move(bn));
  }
  void FoldsInto(const std::vector<FoldPair>& pairs) {
    fold_pairs_.insert(fold_pairs_.end(), pairs.begin(), pairs.end());
  }

 private:
  std::vector<FoldPair> fold_pairs_;
  bool folded_ = false;
};

struct ModelShape {
  std::int64_t channels = 1, height = 28, width = 28, classes = 10;
};

// InvalidArgument for an unknown name or an unsupported shape.
absl::StatusOr<std::shared_ptr<QuantModel>> BuildModel(const std::string& name,
                                                       const ModelShape& shape);
std::vector<std::string> ZooModels();

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_MODELS_H_
