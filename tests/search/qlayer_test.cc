// QuantLayer's modes one by one: what each computes, where gradients go, what state each
// keeps, and profiling over several calls.
#include "search/qlayer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/test_util.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;

// Distinct values in each output channel of a [out, ...] tensor: at most 2^bits when the
// channel is quantized to `bits`.
std::int64_t MaxLevelsPerChannel(const at::Tensor& w) {
  std::int64_t most = 0;
  const at::Tensor rows = w.reshape({w.size(0), -1});
  for (std::int64_t c = 0; c < rows.size(0); ++c) most = std::max(most, std::get<0>(at::_unique(rows[c])).numel());
  return most;
}

std::set<std::string> ParameterNames(torch::nn::Module& m) {
  std::set<std::string> names;
  for (const auto& p : m.named_parameters()) names.insert(p.key());
  return names;
}

TEST(QuantLayerTest, FloatModeIsAPlainConvolution) {
  torch::manual_seed(1);
  QuantLayer layer(3, 4, 3, 1, 1);
  const at::Tensor x = torch::randn({2, 3, 8, 8});
  EXPECT_EQ(layer.mode(), QuantMode::kFloat);
  EXPECT_TRUE(torch::allclose(layer.forward(x), at::conv2d(x, layer.weight(), layer.bias(), 1, 1)));
}

TEST(QuantLayerTest, FixedModeQuantizesWeightsAndInputsOnTheirGrids) {
  torch::manual_seed(2);
  QuantLayer layer(16, 8, 0);  // linear
  ASSERT_OK(layer.SetFixed("uniform:bits=3,granularity=channel", "uniform_act:bits=2,signed=true"));
  EXPECT_EQ(layer.mode(), QuantMode::kFixed);
  const at::Tensor w = layer.QuantizeWeight(layer.weight());
  EXPECT_LE(MaxLevelsPerChannel(w), 8);
  // The input quantizer learns its range in training, then holds it.
  layer.QuantizeInput(torch::randn({64, 16}));
  layer.eval();
  const at::Tensor x = layer.QuantizeInput(torch::randn({64, 16}));
  EXPECT_LE(std::get<0>(at::_unique(x)).numel(), 4);
  // Gradients pass straight through to the float weight.
  layer.train();
  layer.forward(torch::randn({4, 16})).sum().backward();
  ASSERT_TRUE(layer.weight().grad().defined());
  EXPECT_GT(layer.weight().grad().abs().sum().item<double>(), 0);
  // A fixed layer carries only its quantizers: no search or precision parameters.
  for (const auto& name : ParameterNames(layer)) {
    EXPECT_THAT(name, ::testing::Not(::testing::AnyOf(HasSubstr("arch_"), HasSubstr("bits_")))) << name;
  }
  EXPECT_EQ(layer.SetFixed("uniform_act:bits=4", "uniform_act:bits=4").code(), absl::StatusCode::kInvalidArgument);
}

TEST(QuantLayerTest, SearchModeMixesCandidatesByItsLogits) {
  torch::manual_seed(3);
  QuantLayer layer(4, 4, 3, 1, 1);
  ASSERT_OK(layer.SetSearch({"uniform:bits=2,granularity=channel", "uniform:bits=8,granularity=channel"},
                            {"uniform_act:bits=8,signed=true"}));
  EXPECT_EQ(layer.mode(), QuantMode::kSearch);
  const at::Tensor w = layer.weight().detach();
  auto q2 = quantizers::MakeQuantizer("uniform:bits=2,granularity=channel").value();
  auto q8 = quantizers::MakeQuantizer("uniform:bits=8,granularity=channel").value();
  {
    // Equal logits: the plain average of the two candidates.
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::allclose(layer.QuantizeWeight(w), (q2->forward(w) + q8->forward(w)) / 2, 1e-5, 1e-6));
    // A large logit on the 8-bit candidate: its output.
    layer.weight_logits().copy_(torch::tensor({-20.0f, 20.0f}));
    EXPECT_TRUE(torch::allclose(layer.QuantizeWeight(w), q8->forward(w), 1e-5, 1e-6));
  }
  EXPECT_EQ(layer.ChosenWeight(), 1);
  // The logits learn from the loss.
  layer.weight_logits().detach().zero_();
  layer.forward(torch::randn({2, 4, 6, 6})).pow(2).sum().backward();
  ASSERT_TRUE(layer.weight_logits().grad().defined());
  EXPECT_GT(layer.weight_logits().grad().abs().sum().item<double>(), 0);
  EXPECT_FALSE(layer.SetSearch({}, {"uniform_act:bits=8"}).ok());
  EXPECT_THAT(std::string(layer.SetSearch({"pact:bits=4"}, {"uniform_act:bits=8"}).message()),
              HasSubstr("is not a weight scheme"));
}

TEST(QuantLayerTest, PrecisionModeLearnsRealWidthsInItsRange) {
  torch::manual_seed(4);
  QuantLayer layer(8, 8, 1);
  ASSERT_OK(layer.SetPrecision("uniform:bits=4,granularity=channel", "uniform_act:bits=4,signed=true", 2, 8, 5, 2, 8,
                               4, /*learn_act=*/false));
  EXPECT_EQ(layer.mode(), QuantMode::kPrecision);
  EXPECT_NEAR(layer.WeightBits().item<double>(), 5, 1e-4);
  EXPECT_EQ(layer.ActBits().item<double>(), 4);
  EXPECT_FALSE(layer.learns_act_bits());
  // d loss / d bits exists: the FracBits interpolation between 5 and 6 bits.
  layer.forward(torch::randn({2, 8, 4, 4})).pow(2).sum().backward();
  at::Tensor bit_grad;
  for (const auto& p : layer.named_parameters()) {
    if (p.key() == "bits_w") bit_grad = p.value().grad();
  }
  ASSERT_TRUE(bit_grad.defined());
  EXPECT_NE(bit_grad.item<double>(), 0);
  EXPECT_FALSE(layer.SetPrecision("uniform:bits=4", "uniform_act:bits=4", 6, 2, 4, 2, 8, 4, false).ok());
}

TEST(QuantLayerTest, DeployedModeTakesTheWeightAsStored) {
  torch::manual_seed(5);
  QuantLayer layer(4, 4, 0);
  ASSERT_OK(layer.SetDeployed("uniform:bits=2", "uniform_act:bits=8,signed=true"));
  EXPECT_EQ(layer.mode(), QuantMode::kDeployed);
  EXPECT_TRUE(layer.QuantizeWeight(layer.weight()).equal(layer.weight()));
  EXPECT_EQ(layer.fixed_weight_quantizer(), nullptr);
}

TEST(QuantLayerTest, ProfilingAddsUpEveryCall) {
  QuantLayer layer(3, 5, 3, 1, 1);
  layer.StartProfiling();
  at::Tensor x = torch::rand({1, 3, 6, 6});  // non-negative
  layer.forward(x);
  layer.forward(x - 2);  // a second call, with negative input
  layer.StopProfiling();
  const LayerGeometry& g = layer.geometry();
  EXPECT_EQ(g.kind, "conv2d");
  EXPECT_EQ(g.params, 5 * 3 * 9);
  EXPECT_EQ(g.macs, 2 * (5 * 6 * 6) * (3 * 9));
  EXPECT_EQ(g.act_elems, 2 * 3 * 6 * 6);
  EXPECT_TRUE(g.input_signed);
  // A layer no call reached may see anything: signed.
  QuantLayer unused(3, 5, 1);
  unused.StartProfiling();
  unused.StopProfiling();
  EXPECT_EQ(unused.geometry().macs, 0);
  EXPECT_TRUE(unused.geometry().input_signed);
}

}  // namespace
}  // namespace qsearch::search
