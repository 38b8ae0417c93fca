// The fused mixture against the unfused sum of separate quantizers.
#include "quantizers/composite.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qsearch::quantizers {
namespace {

using ::testing::HasSubstr;

std::vector<std::shared_ptr<Quantizer>> MakeAll(const std::vector<std::string>& specs) {
  std::vector<std::shared_ptr<Quantizer>> out;
  for (const auto& s : specs) {
    auto q = MakeQuantizer(s);
    EXPECT_TRUE(q.ok()) << q.status();
    out.push_back(*q);
  }
  return out;
}

struct Grads {
  at::Tensor out, gx, gpi;
  std::vector<at::Tensor> learned;
};

// Runs either the fused composite or sum_i pi_i * Q_i(x) with separate quantizers.
Grads Run(bool fused, const std::vector<std::string>& specs, const at::Tensor& x0,
          const at::Tensor& logits0, const at::Tensor& g) {
  auto qs = MakeAll(specs);
  at::Tensor x = x0.clone().requires_grad_(true);
  at::Tensor logits = logits0.clone().requires_grad_(true);
  at::Tensor pi = at::softmax(logits, 0);
  at::Tensor out;
  if (fused) {
    auto r = CompositeQuantize(x, qs, pi);
    EXPECT_TRUE(r.ok()) << r.status();
    out = *r;
  } else {
    out = at::zeros_like(x);
    for (size_t i = 0; i < qs.size(); ++i) out = out + pi[i] * qs[i]->forward(x);
  }
  (out * g).sum().backward();
  Grads r{out.detach(), x.grad(), logits.grad(), {}};
  for (auto& q : qs) {
    for (auto& p : q->parameters()) r.learned.push_back(p.grad().defined() ? p.grad() : at::Tensor());
  }
  return r;
}

void ExpectSame(const std::vector<std::string>& specs, std::vector<int64_t> shape) {
  at::manual_seed(11);
  at::Tensor x = at::randn(shape);
  at::Tensor logits = at::randn({static_cast<int64_t>(specs.size())});
  at::Tensor g = at::randn(shape);
  Grads fused = Run(true, specs, x, logits, g);
  Grads plain = Run(false, specs, x, logits, g);
  EXPECT_LE((fused.out - plain.out).abs().max().item<float>(), 1e-6);
  EXPECT_TRUE(at::allclose(fused.gx, plain.gx, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(fused.gpi, plain.gpi, 1e-4, 1e-5)) << fused.gpi << plain.gpi;
  ASSERT_EQ(fused.learned.size(), plain.learned.size());
  for (size_t i = 0; i < fused.learned.size(); ++i) {
    ASSERT_EQ(fused.learned[i].defined(), plain.learned[i].defined());
    if (fused.learned[i].defined()) {
      EXPECT_TRUE(at::allclose(fused.learned[i], plain.learned[i], 1e-4, 1e-6));
    }
  }
}

TEST(CompositeTest, WeightMixtureEqualsSumOfSeparateQuantizers) {
  ExpectSame({"uniform:bits=4,granularity=channel", "esb:bits=4,k=1", "ternary", "pot:bits=3"},
             {64, 64, 3, 3});
}

TEST(CompositeTest, EverySchemeMixes) {
  ExpectSame({"residual:bits=3", "vecq:bits=2", "ul2q:bits=4,granularity=channel", "dorefa:bits=3",
              "binary", "uniform:bits=5,symmetric=false,granularity=group,group_size=12", "lsq:bits=4"},
             {24, 36});
}

TEST(CompositeTest, ActivationMixtureWithLearnedParameters) {
  ExpectSame({"pact:bits=2,alpha=1.2", "lsq_act:bits=4", "uniform_act:bits=3", "dorefa_act:bits=2"},
             {8, 16, 10, 10});
}

TEST(CompositeTest, PiGradientIsTheCandidateOutputs) {
  auto qs = MakeAll({"uniform:bits=2", "uniform:bits=8"});
  at::Tensor x = at::randn({100});
  at::Tensor pi = at::tensor({0.3f, 0.7f}).requires_grad_(true);
  auto out = CompositeQuantize(x, qs, pi);
  ASSERT_OK(out);
  out->sum().backward();
  EXPECT_NEAR(pi.grad()[0].item<float>(), qs[0]->forward(x).sum().item<float>(), 1e-4);
  EXPECT_NEAR(pi.grad()[1].item<float>(), qs[1]->forward(x).sum().item<float>(), 1e-4);
}

TEST(CompositeTest, RejectsBadMixtures) {
  auto qs = MakeAll({"uniform:bits=2", "esb:bits=3"});
  at::Tensor x = at::randn({10, 10});
  auto wrong_size = CompositeQuantize(x, qs, at::ones({3}));
  EXPECT_EQ(wrong_size.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_size.status().message()), HasSubstr("one entry per candidate"));
  auto nan = CompositeQuantize(x, qs, at::tensor({0.5f, NAN}));
  EXPECT_THAT(std::string(nan.status().message()), HasSubstr("NaN"));
  auto frac = MakeAll({"uniform:bits=2.5"});
  auto f = CompositeQuantize(x, frac, at::ones({1}));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("integer bits"));
  EXPECT_EQ(CompositeQuantize(x, {}, at::ones({0})).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto per_channel = MakeAll({"uniform:bits=4,granularity=channel"});
  EXPECT_THAT(std::string(CompositeQuantize(at::randn({5}), per_channel, at::ones({1}))
                              .status().message()),
              HasSubstr("rank >= 2"));
}

}  // namespace
}  // namespace qsearch::quantizers
