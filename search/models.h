// The built-in model zoo, built from QuantLayers so every Conv2d / Linear can run in any
// quantization mode: mlp, lenet5, resnet20, vgg_small, mobilenetv2_tiny, for 1- or
// 3-channel images of any size >= 8x8 and any number of classes.
#ifndef QSEARCH_SEARCH_MODELS_H_
#define QSEARCH_SEARCH_MODELS_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "absl/status/statusor.h"
#include "search/qlayer.h"

namespace qsearch::search {

class QuantModel : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  // Quantizable layers in forward order, with their module paths ("stage1.0.conv1").
  std::vector<std::pair<std::string, std::shared_ptr<QuantLayer>>> QuantLayers();
  // Runs `sample` through the model once, recording each layer's MACs, activation size and
  // input sign. Call once after building, before any quantization mode.
  void Profile(const at::Tensor& sample);
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
