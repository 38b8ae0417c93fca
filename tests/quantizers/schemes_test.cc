// Per-scheme behaviour: level counts, grids computed by hand, idempotence, gradients.
#include <cmath>
#include <set>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "quantizers/fractional.h"
#include "quantizers/quantizer.h"
#include "quantizers/replicas.h"
#include "tests/test_util.h"

namespace qsearch::quantizers {
namespace {

std::shared_ptr<Quantizer> Make(const std::string& spec) {
  auto q = MakeQuantizer(spec);
  EXPECT_TRUE(q.ok()) << spec << ": " << q.status();
  return q.ok() ? *q : nullptr;
}

std::set<float> Values(const at::Tensor& t) {
  at::Tensor c = t.detach().contiguous();
  const float* p = c.data_ptr<float>();
  return std::set<float>(p, p + c.numel());
}

// Largest number of distinct values inside any segment of `seg` consecutive elements.
size_t MaxDistinctPerSegment(const at::Tensor& y, int64_t seg) {
  at::Tensor rows = y.detach().contiguous().reshape({-1, seg});
  size_t most = 0;
  for (int64_t r = 0; r < rows.size(0); ++r) most = std::max(most, Values(rows[r]).size());
  return most;
}

struct Case {
  std::string spec;
  std::vector<int64_t> shape;
  int64_t segment;  // 0: whole tensor
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.spec; }

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  const std::vector<int64_t> w = {16, 8, 3, 3};  // 72 weights per channel
  for (int b : {1, 2, 3, 4, 8}) {
    if (b >= 2) {
      cases.push_back({"uniform:bits=" + std::to_string(b), w, 0});
      cases.push_back({"uniform:bits=" + std::to_string(b) + ",granularity=channel", w, 72});
      cases.push_back({"lsq:bits=" + std::to_string(b), w, 0});
      cases.push_back({"pot:bits=" + std::to_string(b) + ",granularity=channel", w, 72});
      cases.push_back({"esb:bits=" + std::to_string(b) + ",k=1", w, 0});
      cases.push_back({"uniform_act:bits=" + std::to_string(b) + ",signed=true", w, 0});
      cases.push_back({"lsq_act:bits=" + std::to_string(b) + ",signed=true", w, 0});
    }
    cases.push_back({"uniform:bits=" + std::to_string(b) + ",symmetric=false", w, 0});
    cases.push_back({"uniform:bits=" + std::to_string(b) +
                         ",symmetric=false,granularity=group,group_size=24", w, 24});
    cases.push_back({"dorefa:bits=" + std::to_string(b), w, 0});
    cases.push_back({"residual:bits=" + std::to_string(b) + ",granularity=channel", w, 72});
    cases.push_back({"vecq:bits=" + std::to_string(b), w, 0});
    cases.push_back({"ul2q:bits=" + std::to_string(b) + ",granularity=channel", w, 72});
    cases.push_back({"uniform_act:bits=" + std::to_string(b), w, 0});
    cases.push_back({"pact:bits=" + std::to_string(b) + ",alpha=1.5", w, 0});
    cases.push_back({"lsq_act:bits=" + std::to_string(b), w, 0});
    cases.push_back({"dorefa_act:bits=" + std::to_string(b), w, 0});
  }
  cases.push_back({"binary", w, 0});
  cases.push_back({"binary:granularity=channel", w, 72});
  cases.push_back({"ternary", w, 0});
  cases.push_back({"ternary:granularity=group,group_size=9", w, 9});
  cases.push_back({"uniform:bits=4", {10, 300}, 0});
  return cases;
}

class SchemeCaseTest : public ::testing::TestWithParam<Case> {};

TEST_P(SchemeCaseTest, LevelsShapeAndIdempotence) {
  const Case& c = GetParam();
  auto q = Make(c.spec);
  ASSERT_NE(q, nullptr);
  at::manual_seed(7);
  at::Tensor x = at::randn(c.shape);
  auto y = q->Quantize(x);
  ASSERT_OK(y);
  EXPECT_EQ(y->sizes(), x.sizes());
  EXPECT_TRUE(at::isfinite(*y).all().item<bool>());
  const int64_t seg = c.segment == 0 ? x.numel() : c.segment;
  EXPECT_LE(MaxDistinctPerSegment(*y, seg), static_cast<size_t>(q->LevelCount())) << c.spec;
  EXPECT_GE(Values(*y).size(), 2u) << c.spec;
  if (q->Idempotent()) {
    q->eval();  // activation ranges stop moving
    at::Tensor once = q->forward(x);
    at::Tensor twice = q->forward(once);
    EXPECT_TRUE(at::allclose(twice, once, 1e-5, 1e-6)) << c.spec << " max diff "
        << (twice - once).abs().max().item<float>();
  }
}

TEST_P(SchemeCaseTest, GradientIsStraightThroughOrClipped) {
  const Case& c = GetParam();
  auto q = Make(c.spec);
  ASSERT_NE(q, nullptr);
  at::manual_seed(3);
  at::Tensor x = at::randn(c.shape).requires_grad_(true);
  at::Tensor g = at::randn(c.shape);
  at::Tensor y = q->forward(x);
  (y * g).sum().backward();
  ASSERT_TRUE(x.grad().defined()) << c.spec;
  const std::string& name = q->scheme().name;
  at::Tensor expected = g;
  if (name == "dorefa" && q->bits() > 1) {
    at::Tensor t = x.detach().tanh();
    expected = g * (1 - t * t) / t.abs().max();
  } else if (q->role() == Role::kActivation || name == "lsq") {
    // Zero outside the clip range, identity inside: the gradient is g or 0 per element.
    at::Tensor gx = x.grad();
    EXPECT_TRUE(at::logical_or(gx == g, gx == 0).all().item<bool>()) << c.spec;
    EXPECT_GT((gx == g).to(at::kFloat).mean().item<float>(), 0.3) << c.spec;
    return;
  }
  EXPECT_TRUE(at::allclose(x.grad(), expected, 1e-4, 1e-5)) << c.spec;
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, SchemeCaseTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string n = std::to_string(info.index) + "_" + info.param.spec;
                           for (char& ch : n) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return n;
                         });

TEST(EsbTest, FourBitsOneSignificantBitHasThePaperLevels) {
  auto q = Make("esb:bits=4,k=1");
  at::manual_seed(1);
  at::Tensor x = at::randn({4096});
  at::Tensor y = q->forward(x);
  const float alpha = x.abs().max().item<float>() / 6.0f;
  std::set<float> want;
  for (float v : {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f}) {
    want.insert(v);
    want.insert(-v);
  }
  std::set<float> got;
  for (float v : Values(y)) got.insert(std::round(v / alpha * 1e4f) / 1e4f);
  EXPECT_EQ(got, want);
  // Every element lands on its nearest level.
  std::vector<float> levels(want.begin(), want.end());
  at::Tensor grid = at::tensor(levels) * alpha;
  at::Tensor nearest = std::get<0>((x.unsqueeze(1) - grid.unsqueeze(0)).abs().min(1));
  EXPECT_LE(((y - x).abs() - nearest).max().item<float>(), 1e-5f);
}

TEST(EsbTest, EveryBitWidthAndSignificandWorksAndPassesGradient) {
  at::manual_seed(2);
  for (int b = 2; b <= 8; ++b) {
    for (int k = 0; k <= b - 1; ++k) {
      const std::string spec = "esb:bits=" + std::to_string(b) + ",k=" + std::to_string(k);
      auto q = Make(spec);
      ASSERT_NE(q, nullptr);
      at::Tensor w = at::randn({32, 16}).requires_grad_(true);
      at::Tensor y = q->forward(w);
      EXPECT_TRUE(at::isfinite(y).all().item<bool>()) << spec;
      EXPECT_LE(Values(y).size(), static_cast<size_t>(q->LevelCount())) << spec;
      EXPECT_GE(Values(y).size(), 3u) << spec;
      EXPECT_TRUE(at::allclose(y.abs().max(), w.detach().abs().max(), 1e-5)) << spec;
      y.pow(2).sum().backward();
      ASSERT_TRUE(w.grad().defined()) << spec;
      EXPECT_GT(w.grad().abs().sum().item<float>(), 0) << spec;
      // The gradient moves the weights: one SGD step changes them.
      at::Tensor before = w.detach().clone();
      { at::NoGradGuard ng; w.sub_(0.1 * w.grad()); }
      EXPECT_FALSE(at::equal(before, w.detach())) << spec;
    }
  }
}

TEST(HalfGridTest, Ul2qGridIsHalfIntegerAroundTheMean) {
  auto q = Make("ul2q:bits=3");
  at::manual_seed(4);
  at::Tensor x = at::randn({2000}) * 0.3 + 0.7;
  at::Tensor y = q->forward(x);
  // The statistics exactly (in double); the quantizer holds them to float precision.
  const double mean = x.to(at::kDouble).mean().item<double>();
  const double alpha = 0.5860 * x.to(at::kDouble).std(/*unbiased=*/false).item<double>();
  at::Tensor codes = (y.to(at::kDouble) - mean) / alpha - 0.5;
  EXPECT_TRUE(at::allclose(codes, codes.round(), 0, 1e-4));
  EXPECT_GE(codes.min().item<double>(), -4 - 1e-6);
  EXPECT_LE(codes.max().item<double>(), 3 + 1e-6);
  // Symmetric around the mean: the extreme levels are -3.5 and +3.5 steps away.
  EXPECT_NEAR((y.max().item<double>() - mean) / alpha, 3.5, 1e-3);
  EXPECT_NEAR((y.min().item<double>() - mean) / alpha, -3.5, 1e-3);
}

TEST(HalfGridTest, VecqKeepsTheL2Norm) {
  for (const char* spec : {"vecq:bits=1", "vecq:bits=2", "vecq:bits=4", "vecq:bits=8"}) {
    auto q = Make(spec);
    at::Tensor x = at::randn({64, 27});
    at::Tensor y = q->forward(x);
    EXPECT_NEAR(y.norm().item<double>(), x.norm().item<double>(),
                1e-5 * x.norm().item<double>()) << spec;
  }
  auto per_channel = Make("vecq:bits=3,granularity=channel");
  at::Tensor x = at::randn({8, 50}) * at::arange(1, 9).unsqueeze(1);
  at::Tensor y = per_channel->forward(x);
  EXPECT_TRUE(at::allclose(y.norm(2, 1), x.norm(2, 1), 1e-5));
}

TEST(WeightSchemeTest, UniformSymmetricUsesMaxAbsGrid) {
  auto q = Make("uniform:bits=4");
  at::Tensor x = at::randn({500});
  at::Tensor y = q->forward(x);
  const float s = x.abs().max().item<float>() / 7.0f;
  at::Tensor codes = y / s;
  EXPECT_TRUE(at::allclose(codes, codes.round(), 0, 1e-4));
  EXPECT_LE(codes.abs().max().item<float>(), 7.0f + 1e-4f);
  EXPECT_LE((y - x).abs().max().item<float>(), s / 2 + 1e-6f);
}

TEST(WeightSchemeTest, UniformAsymmetricKeepsZeroAndCoversTheRange) {
  auto q = Make("uniform:bits=3,symmetric=false");
  at::Tensor x = at::rand({300}) * 3 - 0.5;
  x[0] = 0;
  at::Tensor y = q->forward(x);
  EXPECT_EQ(y[0].item<float>(), 0.0f);
  const float s = (x.max().item<float>() - x.min().item<float>()) / 7.0f;
  EXPECT_LE((y - x).abs().max().item<float>(), s * 0.5f + 1e-5f);
}

TEST(WeightSchemeTest, BinaryAndTernaryMatchHandComputedScales) {
  at::Tensor x = at::randn({1000});
  at::Tensor b = Make("binary")->forward(x);
  const float a = x.abs().mean().item<float>();
  EXPECT_EQ(Values(b), (std::set<float>{-a, a}));

  at::Tensor t = Make("ternary")->forward(x);
  const float delta = 0.7f * a;
  at::Tensor mask = x.abs() > delta;
  const float alpha = x.abs().masked_select(mask).mean().item<float>();
  std::set<float> got = Values(t);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_NEAR(*got.rbegin(), alpha, 1e-5);
  EXPECT_NEAR(*got.begin(), -alpha, 1e-5);
  EXPECT_TRUE(at::equal(t != 0, mask));
}

TEST(WeightSchemeTest, ResidualIsSumOfBinarisationsByHand) {
  at::Tensor x = at::tensor({1.0f, -2.0f, 3.0f, -0.5f});
  at::Tensor y = Make("residual:bits=2")->forward(x);
  // r0 = x, a0 = mean|x| = 1.625; r1 = x - a0*sign(x) = {-.625, -.375, 1.375, 1.125};
  // a1 = mean|r1| = 0.875; out = a0*sign(r0) + a1*sign(r1).
  at::Tensor want = at::tensor({1.625f - 0.875f, -1.625f - 0.875f, 1.625f + 0.875f,
                                -1.625f + 0.875f});
  EXPECT_TRUE(at::allclose(y, want, 0, 1e-6)) << y;
}

TEST(WeightSchemeTest, PotLevelsArePowersOfTwo) {
  at::Tensor x = at::randn({2000});
  at::Tensor y = Make("pot:bits=4")->forward(x);
  const float top = x.abs().max().item<float>();
  for (float v : Values(y)) {
    if (v == 0) continue;
    const double e = std::log2(std::fabs(v) / top);
    EXPECT_NEAR(e, std::round(e), 1e-5) << v;
    EXPECT_GE(e, -6 - 1e-6);  // 2^(4-1) - 1 = 7 magnitudes: 2^0 .. 2^-6
  }
}

TEST(WeightSchemeTest, DorefaLiesOnUnitGrid) {
  at::Tensor y = Make("dorefa:bits=2")->forward(at::randn({400}));
  std::set<float> got = Values(y);
  for (float v : got) EXPECT_NEAR(std::fmod((v + 1) * 1.5f + 1e-4f, 1.0f), 0, 1e-3) << v;
  EXPECT_EQ(got.size(), 4u);
  EXPECT_FLOAT_EQ(*got.begin(), -1.0f);
  EXPECT_FLOAT_EQ(*got.rbegin(), 1.0f);
}

TEST(LearnedTest, LsqStepGradientFollowsThePaper) {
  auto q = Make("lsq:bits=3");  // Qn = 4, Qp = 3
  at::Tensor x = at::tensor({-3.0f, -0.26f, 0.1f, 0.74f, 5.0f});
  q->forward(x);  // initialises the step from this batch
  at::Tensor step = q->named_parameters()["step"];
  {
    at::NoGradGuard ng;
    step.fill_(0.5);
  }
  at::Tensor y = q->forward(x);
  EXPECT_TRUE(at::allclose(y, at::tensor({-2.0f, -0.5f, 0.0f, 0.5f, 1.5f})));
  y.sum().backward();
  // d q / d s: -Qn below, Qp above, round(x/s) - x/s inside; scaled by 1/sqrt(N * Qp).
  const double raw = -4 + (-1 + 0.52) + (0 - 0.2) + (1 - 1.48) + 3;
  EXPECT_NEAR(step.grad().item<double>(), raw / std::sqrt(5.0 * 3), 1e-5);
}

// One replica of two, each holding half of a batch; the other replica's contributions
// are not needed once the step is initialised, so the collectives are no-ops.
class HalfOfTwoReplicas : public Replicas {
 public:
  int world() const override { return 2; }
  void Sum(at::Tensor&) override {}
  void Max(at::Tensor&) override {}
  at::Tensor SumWithGrad(const at::Tensor& t) override { return t; }
  double WholeBatchRatio() const override { return 2.0; }
};

TEST(LearnedTest, LsqActivationStepGradientsOfTwoSharesAddUpToTheWholeBatchs) {
  // N in LSQ's 1/sqrt(N * Qp) counts the whole batch's activations: each share's step
  // gradient, summed over the replicas, gives the one-process gradient. Weights are whole
  // in every replica and keep their own N.
  for (const char* spec : {"lsq_act:bits=3", "lsq:bits=3"}) {
    auto q = Make(spec);
    at::Tensor x = at::tensor({0.1f, 0.74f, 5.0f, 0.3f, 1.26f, 2.2f, 0.05f, 0.9f, 1.7f, 2.6f, 0.2f, 0.45f}).reshape({4, 3});
    q->forward(x);  // initialises the step from the whole batch
    at::Tensor step = q->named_parameters()["step"];
    q->forward(x).sum().backward();
    const double whole = step.grad().item<double>();
    double shares = 0;
    {
      HalfOfTwoReplicas replicas;
      ScopedReplicas active(&replicas);
      for (int half = 0; half < 2; ++half) {
        step.mutable_grad().zero_();
        q->forward(x.slice(0, 2 * half, 2 * half + 2)).sum().backward();
        shares += step.grad().item<double>();
      }
    }
    if (q->role() == Role::kActivation) {
      EXPECT_NEAR(shares, whole, 1e-6) << spec;
    } else {
      EXPECT_NEAR(shares, whole * std::sqrt(2.0), 1e-6) << spec << ": half a weight tensor is a tensor of its own";
    }
  }
}

TEST(LearnedTest, LsqStepGradientMatchesFiniteDifferencesWhenSaturated) {
  auto q = Make("lsq:bits=4");
  at::Tensor x = at::tensor({-9.0f, -7.5f, 8.0f, 12.0f});
  q->forward(x);
  at::Tensor step = q->named_parameters()["step"];
  { at::NoGradGuard ng; step.fill_(0.25); }
  q->forward(x).sum().backward();
  const double h = 1e-3;
  auto loss_at = [&](double s) {
    at::NoGradGuard ng;
    step.fill_(s);
    return q->forward(x).sum().item<double>();
  };
  const double fd = (loss_at(0.25 + h) - loss_at(0.25 - h)) / (2 * h);
  const double scale = 1 / std::sqrt(4.0 * 7);
  EXPECT_NEAR(step.grad().item<double>(), fd * scale, 1e-3);
}

TEST(LearnedTest, PactClipGradientMatchesFiniteDifferences) {
  auto q = Make("pact:bits=3,alpha=2");
  at::Tensor alpha = q->named_parameters()["alpha"];
  // Above the clip the output is alpha itself: d/d alpha = count above the clip.
  at::Tensor x = at::tensor({2.5f, 3.0f, 7.0f, -1.0f});
  q->forward(x).sum().backward();
  auto loss_at = [&](double a) {
    at::NoGradGuard ng;
    alpha.fill_(a);
    return q->forward(x).sum().item<double>();
  };
  const double fd = (loss_at(2.001) - loss_at(1.999)) / 0.002;
  EXPECT_NEAR(alpha.grad().item<double>(), 3.0, 1e-6);
  EXPECT_NEAR(fd, 3.0, 1e-3);
  // Inside the clip PACT's gradient is zero (straight-through rounding).
  alpha.grad().zero_();
  loss_at(2.0);
  q->forward(at::tensor({0.3f, 1.1f})).sum().backward();
  EXPECT_EQ(alpha.grad().item<float>(), 0.0f);
}

TEST(ActivationTest, UniformActPassesThroughBeforeStartStepThenUsesEma) {
  auto q = Make("uniform_act:bits=4,momentum=0.5,start_step=2");
  q->train();
  at::Tensor a = at::tensor({0.0f, 1.0f, 2.0f});
  at::Tensor b = at::tensor({0.3f, 4.0f});
  EXPECT_TRUE(at::equal(q->forward(a), a));  // step 1
  EXPECT_TRUE(at::equal(q->forward(b), b));  // step 2; range = 0.5*2 + 0.5*4 = 3
  at::Tensor c = at::tensor({0.7f, 6.0f});
  at::Tensor y = q->forward(c);  // step 3; range = 0.5*3 + 0.5*6 = 4.5
  const float s = 4.5f / 15;
  EXPECT_NEAR(y[1].item<float>(), 4.5f, 1e-5);  // clipped to the running range
  EXPECT_NEAR(y[0].item<float>(), std::nearbyint(0.7f / s) * s, 1e-6);
  q->eval();  // eval keeps the range fixed
  at::Tensor z = q->forward(at::tensor({100.0f}));
  EXPECT_NEAR(z[0].item<float>(), 4.5f, 1e-5);
}

TEST(FracBitsTest, EqualsTheIntegerQuantizerAtIntegerBits) {
  for (const char* scheme : {"uniform", "esb", "pot", "residual", "ul2q", "dorefa"}) {
    auto frac = std::make_shared<FracBitsQuantizer>(*ParseSpec(std::string(scheme) + ":bits=3"));
    auto integer = Make(std::string(scheme) + ":bits=3");
    at::Tensor x = at::randn({16, 9});
    at::Tensor got = frac->Forward(x, at::full({}, 3.0));
    EXPECT_TRUE(at::equal(got, integer->forward(x))) << scheme;
  }
}

TEST(FracBitsTest, BitGradientIsFiniteNonZeroAndMatchesFiniteDifferences) {
  auto frac = std::make_shared<FracBitsQuantizer>(*ParseSpec("uniform:bits=4"));
  at::manual_seed(5);
  at::Tensor x = at::randn({32, 16});
  at::Tensor w = at::randn({32, 16});
  for (double b0 : {2.25, 3.5, 5.75, 7.5}) {
    at::Tensor b = at::full({}, b0, at::kDouble).requires_grad_(true);
    (frac->Forward(x, b) * w).sum().backward();
    const double grad = b.grad().item<double>();
    EXPECT_TRUE(std::isfinite(grad));
    EXPECT_NE(grad, 0.0) << b0;
    const double h = 1e-3;
    auto loss = [&](double v) {
      return (frac->Forward(x, at::full({}, v, at::kDouble)) * w).sum().item<double>();
    };
    EXPECT_NEAR(grad, (loss(b0 + h) - loss(b0 - h)) / (2 * h), 1e-2 * std::max(1.0, std::fabs(grad)))
        << b0;
  }
}

TEST(FracBitsTest, OutputMovesFromLowerToUpperGrid) {
  auto frac = std::make_shared<FracBitsQuantizer>(*ParseSpec("esb:bits=4,k=1"));
  at::Tensor x = at::randn({256});
  at::Tensor lo = frac->Forward(x, at::full({}, 3.0));
  at::Tensor hi = frac->Forward(x, at::full({}, 4.0));
  at::Tensor mid = frac->Forward(x, at::full({}, 3.25));
  EXPECT_TRUE(at::allclose(mid, 0.75 * lo + 0.25 * hi, 1e-5, 1e-6));
  // Upper grid is finer: closer to x.
  EXPECT_LT((hi - x).pow(2).sum().item<float>(), (lo - x).pow(2).sum().item<float>());
}

}  // namespace
}  // namespace qsearch::quantizers
