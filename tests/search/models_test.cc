// Zoo models: layer tables against a hand count, BN folding against the eval-mode model,
// profiling that adds up every call of a layer.
#include "search/models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/test_util.h"

namespace qsearch::search {
namespace {

TEST(LayerTableTest, Lenet5GeometryMatchesHandCount) {
  auto model = BuildModel("lenet5", {1, 28, 28, 10});
  ASSERT_OK(model);
  (*model)->Profile(at::randn({2, 1, 28, 28}));
  auto layers = (*model)->QuantLayers();
  ASSERT_EQ(layers.size(), 5u);
  struct Want { const char* name; std::int64_t params, macs, act; };
  // conv1: 6x1x5x5 weights, 28x28x6 outputs x 25 MACs; conv2: 16x6x5x5 on 14x14 -> 10x10.
  const Want want[] = {{"conv1", 150, 28 * 28 * 6 * 25, 784},
                       {"conv2", 2400, 10 * 10 * 16 * 150, 6 * 14 * 14},
                       {"fc1", 400 * 120, 400 * 120, 400},
                       {"fc2", 120 * 84, 120 * 84, 120},
                       {"fc3", 84 * 10, 84 * 10, 84}};
  for (size_t i = 0; i < 5; ++i) {
    const auto& g = layers[i].second->geometry();
    EXPECT_EQ(layers[i].first, want[i].name);
    EXPECT_EQ(g.params, want[i].params) << want[i].name;
    EXPECT_EQ(g.macs, want[i].macs) << want[i].name;
    EXPECT_EQ(g.act_elems, want[i].act) << want[i].name;
  }
  EXPECT_TRUE(layers[0].second->geometry().input_signed);   // normalised image
  EXPECT_FALSE(layers[1].second->geometry().input_signed);  // after ReLU + pool
}

TEST(FoldBatchNormTest, FoldedModelComputesWhatTheEvalModeModelDid) {
  for (const char* name : {"resnet20", "vgg_small", "mobilenetv2_tiny"}) {
    torch::manual_seed(1);
    ASSERT_OK_AND_ASSIGN(auto model, BuildModel(name, {3, 16, 16, 10}));
    model->Profile(torch::randn({2, 3, 16, 16}));
    // Give the batch norms non-trivial statistics first.
    model->train();
    for (int i = 0; i < 3; ++i) model->forward(torch::randn({8, 3, 16, 16}) * 2 + 0.5);
    {
      torch::NoGradGuard ng;
      for (auto& p : model->named_parameters()) {
        if (p.key().find("bn") != std::string::npos) p.value().uniform_(0.5, 1.5);
      }
    }
    model->eval();
    const at::Tensor x = torch::randn({4, 3, 16, 16});
    const at::Tensor before = model->forward(x);
    EXPECT_GT(model->FoldBatchNorm(), 0) << name;
    EXPECT_EQ(model->FoldBatchNorm(), 0) << "folding twice does nothing";
    EXPECT_TRUE(torch::allclose(model->forward(x), before, 1e-4, 1e-4)) << name;
    // Train mode no longer normalises with batch statistics either.
    model->train();
    EXPECT_TRUE(torch::allclose(model->forward(x), before, 1e-4, 1e-4)) << name;
  }
}

}  // namespace
}  // namespace qsearch::search
