// The fused kernel against an independent ATen implementation of every level function.
#include "quantizers/testing/reference_ops.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <gtest/gtest.h>

#include "quantizers/composite.h"
#include "tests/test_util.h"

namespace qsearch::quantizers {
namespace {

TEST(ReferenceTest, KernelMatchesAtenForEveryScheme) {
  const std::vector<std::string> specs = {
      "uniform:bits=4", "uniform:bits=3,granularity=channel",
      "uniform:bits=5,symmetric=false,granularity=group,group_size=9",
      "uniform:bits=2,signed=false", "lsq:bits=3", "dorefa:bits=3", "dorefa:bits=1", "binary",
      "ternary:granularity=channel", "residual:bits=3", "pot:bits=5", "esb:bits=5,k=2",
      "esb:bits=3,k=0", "vecq:bits=3", "ul2q:bits=2,granularity=channel", "uniform_act:bits=3",
      "uniform_act:bits=4,signed=true", "pact:bits=3,alpha=1.3", "lsq_act:bits=2",
      "dorefa_act:bits=3", "esb:bits=32"};
  at::manual_seed(21);
  for (const auto& spec : specs) {
    auto made = MakeQuantizer(spec);
    ASSERT_OK(made);
    auto q = *made;
    at::Tensor x0 = at::randn({12, 4, 3, 3});
    at::Tensor g = at::randn(x0.sizes());
    PointForm form = q->Prepare(x0);

    at::Tensor x1 = x0.clone().requires_grad_(true);
    at::Tensor fused = MixForms(x1, {form}, at::ones({1}));
    (fused * g).sum().backward();
    at::Tensor fused_learned;
    if (form.learned.defined()) {
      fused_learned = form.learned.grad().clone();
      form.learned.mutable_grad().reset();
    }

    at::Tensor x2 = x0.clone().requires_grad_(true);
    at::Tensor ref = testing::ReferenceQuantize(form, x2);
    (ref * g).sum().backward();

    const float scale = x0.abs().max().item<float>();
    EXPECT_LE((fused - ref).abs().max().item<float>(), 1e-5f * scale) << spec;
    EXPECT_TRUE(at::allclose(x1.grad(), x2.grad(), 1e-4, 1e-5)) << spec;
    if (q->scheme().name == "lsq" || q->scheme().name == "lsq_act") {
      EXPECT_NEAR(fused_learned.item<float>(), form.learned.grad().item<float>(), 1e-4) << spec;
    }
  }
}

}  // namespace
}  // namespace qsearch::quantizers
