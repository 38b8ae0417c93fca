// NarrowConv2d against LibTorch's own convolution: the same output and the same input,
// weight and bias gradients, over strides, paddings and kernel sizes where the direct
// input gradient's edge arithmetic could go wrong; in double precision to the last bits.
#include "search/narrow_conv.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "search/qlayer.h"

namespace qsearch::search {
namespace {

struct Case {
  std::int64_t cin, cout, kernel, stride, padding, height, width;
  bool bias;
};

class NarrowConvTest : public ::testing::TestWithParam<Case> {};

TEST_P(NarrowConvTest, MatchesLibTorchForwardAndGradients) {
  const Case c = GetParam();
  at::manual_seed(7);
  const auto opts = at::TensorOptions(at::kDouble);
  const at::Tensor x0 = at::randn({3, c.cin, c.height, c.width}, opts);
  const at::Tensor w0 = at::randn({c.cout, c.cin, c.kernel, c.kernel}, opts);
  const at::Tensor b0 = c.bias ? at::randn({c.cout}, opts) : at::Tensor();

  auto run = [&](bool narrow) {
    at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    at::Tensor b = c.bias ? b0.clone().requires_grad_(true) : at::Tensor();
    at::Tensor y = narrow ? NarrowConv2d(x, w, b, c.stride, c.padding) : at::conv2d(x, w, b, c.stride, c.padding);
    // A weighting that differs per output element, so a misplaced gradient shows.
    const at::Tensor weighting = at::arange(y.numel(), opts).reshape(y.sizes()).sin();
    (y * weighting).sum().backward();
    return std::vector<at::Tensor>{y.detach(), x.grad(), w.grad(), c.bias ? b.grad() : at::zeros({1}, opts)};
  };
  const auto ours = run(true), theirs = run(false);
  const char* what[] = {"output", "input gradient", "weight gradient", "bias gradient"};
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(ours[i].sizes(), theirs[i].sizes()) << what[i];
    EXPECT_TRUE(at::allclose(ours[i], theirs[i], 1e-10, 1e-10))
        << what[i] << ": largest difference " << (ours[i] - theirs[i]).abs().max().item<double>();
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, NarrowConvTest,
                         ::testing::Values(Case{1, 6, 5, 1, 0, 12, 12, true},   // lenet5's first layer
                                           Case{1, 16, 3, 1, 1, 9, 7, false},   // resnet20's stem, odd sizes
                                           Case{3, 8, 7, 2, 3, 13, 11, false},  // an RGB stem, stride 2
                                           Case{3, 4, 3, 2, 0, 8, 8, true},     // stride 2, no padding
                                           Case{2, 5, 3, 3, 2, 7, 10, true},    // stride 3, padding 2
                                           Case{4, 3, 5, 1, 4, 3, 4, false},    // padding wider than the image
                                           Case{1, 3, 3, 1, 3, 5, 6, true},     // padding beyond the kernel: cropped
                                           Case{1, 2, 1, 2, 0, 6, 5, true}));   // 1x1 kernel, stride 2

// The input gradient is one fixed sum per element whatever the thread count, so data-
// parallel ranks and single-process runs see the same first-layer gradient.
TEST(NarrowConvDeterminism, InputGradientDoesNotDependOnTheThreadCount) {
  const int threads = at::get_num_threads();
  for (const std::int64_t stride : {1, 2}) {
    at::manual_seed(3);
    const at::Tensor x0 = at::randn({16, 1, 28, 28}), w = at::randn({6, 1, 5, 5});
    auto grad = [&](int n) {
      at::set_num_threads(n);
      at::Tensor x = x0.clone().requires_grad_(true);
      NarrowConv2d(x, w, at::Tensor(), stride, 2).sin().sum().backward();
      return x.grad();
    };
    const at::Tensor one = grad(1), two = grad(2);
    EXPECT_TRUE(at::equal(one, two)) << "stride " << stride << ": largest difference "
                                     << (one - two).abs().max().item<float>();
  }
  at::set_num_threads(threads);
}

TEST(NarrowConvUse, OnlyOneChannelInputsThatNeedAGradient) {
  const at::Tensor narrow = at::randn({2, 1, 8, 8}).requires_grad_(true);
  EXPECT_TRUE(UseNarrowConv(narrow, 1));
  EXPECT_FALSE(UseNarrowConv(at::randn({2, 1, 8, 8}), 1));                      // no gradient wanted
  EXPECT_FALSE(UseNarrowConv(at::randn({2, 3, 8, 8}).requires_grad_(true), 1));  // RGB: LibTorch is faster
  EXPECT_FALSE(UseNarrowConv(at::randn({2, 1, 8, 8}).to(at::kHalf).requires_grad_(true), 1));
  EnableNarrowConv(false);
  EXPECT_FALSE(UseNarrowConv(narrow, 1));
  EnableNarrowConv(true);
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(UseNarrowConv(narrow, 1));
}

// In a layer: a first layer under QSS (its input's mixture weights learn) takes the narrow
// path, and every parameter's gradient is the one the generic convolution gives, in float.
TEST(NarrowConvUse, FirstLayerUnderSearchGetsTheGenericGradients) {
  at::manual_seed(3);
  QuantLayer layer(1, 6, 5);
  ASSERT_TRUE(layer.SetSearch({"uniform:bits=4,granularity=channel", "pot:bits=3,granularity=channel"},
                              {"uniform_act:bits=4,signed=true", "lsq_act:bits=4,signed=true"})
                  .ok());
  layer.train();
  const at::Tensor x = at::randn({8, 1, 12, 12});
  EXPECT_NE(layer.forward(x).grad_fn()->name().find("NarrowConv"), std::string::npos);

  const at::Tensor xq = layer.QuantizeInput(x), wq = layer.QuantizeWeight(layer.weight());
  const std::vector<at::Tensor> params = layer.parameters();
  const auto ours = torch::autograd::grad({NarrowConv2d(xq, wq, layer.bias(), 1, 0).pow(2).sum()}, params,
                                          {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
  const auto theirs = torch::autograd::grad({at::conv2d(xq, wq, layer.bias()).pow(2).sum()}, params, {}, false,
                                            false, true);
  int compared = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    ASSERT_EQ(ours[i].defined(), theirs[i].defined()) << "parameter " << i;
    if (!ours[i].defined()) continue;
    EXPECT_TRUE(at::allclose(ours[i], theirs[i], 1e-4, 1e-5))
        << "parameter " << i << ": largest difference " << (ours[i] - theirs[i]).abs().max().item<double>();
    ++compared;
  }
  // weight, bias, both logits and LSQ's step at least.
  EXPECT_GE(compared, 5);
}

}  // namespace
}  // namespace qsearch::search
