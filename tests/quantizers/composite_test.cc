// The fused mixture against the unfused sum of separate quantizers.
#include "quantizers/composite.h"
#include "quantizers/point_kernel.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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

// The two runs gave the same bits: output, every gradient, the same learned parameters.
void ExpectSameBits(const Grads& a, const Grads& b, const std::string& what) {
  EXPECT_TRUE(at::equal(a.out, b.out)) << what;
  EXPECT_TRUE(at::equal(a.gx, b.gx)) << what;
  EXPECT_TRUE(at::equal(a.gpi, b.gpi)) << what;
  ASSERT_EQ(a.learned.size(), b.learned.size()) << what;
  for (size_t i = 0; i < a.learned.size(); ++i) {
    ASSERT_EQ(a.learned[i].defined(), b.learned[i].defined()) << what;
    if (a.learned[i].defined()) EXPECT_TRUE(at::equal(a.learned[i], b.learned[i])) << what;
  }
}

// Sets LibTorch's thread count for a scope and puts the previous one back, also when an
// ASSERT ends the test early.
class ThreadsForTest {
 public:
  explicit ThreadsForTest(int n) : before_(at::get_num_threads()) { at::set_num_threads(n); }
  ~ThreadsForTest() { at::set_num_threads(before_); }
  void Set(int n) { at::set_num_threads(n); }

 private:
  int before_;
};

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

TEST(CompositeTest, AFloat64MixtureGetsAFloat64PiGradient) {
  // A float64 job's mixture weights are float64: their gradient comes back in float64,
  // not rounded to float32 on the way (which moved data-parallel and one-process runs
  // apart by 1e-7 where float64 sums agree to 1e-16).
  auto qs = MakeAll({"uniform:bits=2", "uniform:bits=8"});
  at::manual_seed(11);
  const at::Tensor x = at::randn({1000}, at::kDouble);
  const at::Tensor g = at::randn({1000}, at::kDouble);
  at::Tensor pi = at::tensor({0.3, 0.7}, at::kDouble).requires_grad_(true);
  auto out = CompositeQuantize(x, qs, pi);
  ASSERT_OK(out);
  (*out * g).sum().backward();
  ASSERT_EQ(pi.grad().scalar_type(), at::kDouble);
  for (int i = 0; i < 2; ++i) {
    const double want = at::dot(g, qs[i]->forward(x)).item<double>();
    EXPECT_NEAR(pi.grad()[i].item<double>(), want, 1e-12 * std::abs(want)) << i;
  }
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

// One spec as a fixed policy (one form at weight 1) with the kernels of `isa`: its output
// and dL/dx for the loss sum(g * out).
struct Alone {
  at::Tensor out, gx;
};
Alone RunAlone(KernelIsa isa, const std::string& spec, const at::Tensor& x, const at::Tensor& g) {
  SetKernelIsaForTesting(isa);
  auto q = MakeQuantizer(spec);
  EXPECT_TRUE(q.ok()) << q.status();
  if (!q.ok()) return {};
  at::Tensor xi = x.clone().requires_grad_(true);
  at::Tensor out = (*q)->forward(xi);
  (out * g).sum().backward();
  return {out.detach(), xi.grad()};
}

// Every value through the kernels' AVX2 copy and through their baseline copy: the fused
// mixture's output and all its gradients, and a fixed policy's one form, equal bit for
// bit. (Where the CPU has no AVX2 both runs take the baseline copy.)
TEST(PointKernelIsaTest, Avx2AndBaselineGiveTheSameBits) {
#if defined(__x86_64__)
  EXPECT_EQ(ActiveKernelIsa(), __builtin_cpu_supports("avx2") ? KernelIsa::kAvx2 : KernelIsa::kBaseline);
#endif
  struct RestoreIsa {  // also when an ASSERT below ends the test early
    KernelIsa isa = ActiveKernelIsa();
    ~RestoreIsa() { SetKernelIsaForTesting(isa); }
  } restore;
  struct Case {
    std::vector<std::string> specs;
    std::vector<int64_t> shape;
  };
  // Shapes: a remainder after the 8-wide lanes, segments that end inside a block, and
  // enough blocks for both threads.
  const std::vector<Case> cases = {
      {{"uniform:bits=4,granularity=channel", "esb:bits=4,k=1", "ternary", "pot:bits=3"}, {64, 64, 3, 3}},
      {{"residual:bits=3", "vecq:bits=2", "ul2q:bits=4,granularity=channel", "dorefa:bits=3", "binary",
        "uniform:bits=5,symmetric=false,granularity=group,group_size=12", "lsq:bits=4"},
       {24, 36}},
      {{"pact:bits=2,alpha=1.2", "lsq_act:bits=4", "uniform_act:bits=3", "dorefa_act:bits=2"}, {15, 15, 27, 29}},
  };
  for (const Case& c : cases) {
    at::manual_seed(5);
    const at::Tensor x = at::randn(c.shape) * 2;
    const at::Tensor logits = at::randn({static_cast<int64_t>(c.specs.size())});
    const at::Tensor g = at::randn(c.shape);
    SetKernelIsaForTesting(KernelIsa::kBaseline);
    const Grads base = quantizers::Run(true, c.specs, x, logits, g);
    SetKernelIsaForTesting(KernelIsa::kAvx2);
    const Grads avx2 = quantizers::Run(true, c.specs, x, logits, g);
    ExpectSameBits(base, avx2, c.specs[0]);
    // Each spec alone as a fixed policy: one form at weight 1, no mixture gradient.
    for (const auto& spec : c.specs) {
      const Alone base_alone = RunAlone(KernelIsa::kBaseline, spec, x, g);
      const Alone avx2_alone = RunAlone(KernelIsa::kAvx2, spec, x, g);
      EXPECT_TRUE(at::equal(base_alone.out, avx2_alone.out)) << spec;
      EXPECT_TRUE(at::equal(base_alone.gx, avx2_alone.gx)) << spec;
    }
  }
}

// The ATen forms (what a tensor on a CUDA device runs) against the fused kernels on the
// CPU: the mixture's output, dL/dx and every learned gradient, and each spec alone.
TEST(PointKernelIsaTest, AtenOpsGiveTheFusedKernelsValues) {
  struct RestoreIsa {
    KernelIsa isa = ActiveKernelIsa();
    ~RestoreIsa() { SetKernelIsaForTesting(isa); }
  } restore;
  const KernelIsa fused = ActiveKernelIsa();
  const std::vector<std::pair<std::vector<std::string>, std::vector<int64_t>>> cases = {
      {{"uniform:bits=4,granularity=channel", "esb:bits=4,k=1", "ternary", "pot:bits=3"}, {64, 64, 3, 3}},
      {{"residual:bits=3", "vecq:bits=2", "ul2q:bits=4,granularity=channel", "dorefa:bits=3", "binary",
        "uniform:bits=5,symmetric=false,granularity=group,group_size=12", "lsq:bits=4", "esb:bits=5,k=2",
        "uniform:bits=3,symmetric=false"},
       {24, 36}},
      {{"pact:bits=2,alpha=1.2", "lsq_act:bits=4", "uniform_act:bits=3", "dorefa_act:bits=2",
        "uniform_act:bits=4,signed=true"},
       {15, 15, 27, 29}},
  };
  for (const auto& [specs, shape] : cases) {
    at::manual_seed(5);
    const at::Tensor x = at::randn(shape) * 2;
    const at::Tensor logits = at::randn({static_cast<int64_t>(specs.size())});
    const at::Tensor g = at::randn(shape);
    SetKernelIsaForTesting(fused);
    const Grads kernel = quantizers::Run(true, specs, x, logits, g);
    SetKernelIsaForTesting(KernelIsa::kAten);
    const Grads aten = quantizers::Run(true, specs, x, logits, g);
    EXPECT_TRUE(at::allclose(kernel.out, aten.out, 1e-6, 1e-6)) << specs[0] << ": " << (kernel.out - aten.out).abs().max();
    EXPECT_TRUE(at::allclose(kernel.gx, aten.gx, 1e-6, 1e-6)) << specs[0];
    EXPECT_TRUE(at::allclose(kernel.gpi, aten.gpi, 1e-4, 1e-4)) << specs[0] << ": " << kernel.gpi << aten.gpi;
    ASSERT_EQ(kernel.learned.size(), aten.learned.size());
    for (size_t i = 0; i < kernel.learned.size(); ++i) {
      ASSERT_EQ(kernel.learned[i].defined(), aten.learned[i].defined());
      if (kernel.learned[i].defined()) EXPECT_TRUE(at::allclose(kernel.learned[i], aten.learned[i], 1e-4, 1e-5));
    }
    for (const auto& spec : specs) {
      const Alone kernel_alone = RunAlone(fused, spec, x, g);
      const Alone aten_alone = RunAlone(KernelIsa::kAten, spec, x, g);
      EXPECT_TRUE(at::equal(kernel_alone.out, aten_alone.out)) << spec;
      EXPECT_TRUE(at::allclose(kernel_alone.gx, aten_alone.gx, 1e-6, 1e-6)) << spec;
    }
  }
}

// at::parallel_for spreads work over threads only in code built with OpenMP (ATen's
// ParallelOpenMP.h tests _OPENMP); built without it, every kernel of ours ran on one thread.
TEST(KernelThreadsTest, ParallelForUsesEveryThread) {
  ThreadsForTest threads(2);
  std::vector<int> worker(64, -1);
  at::parallel_for(0, 64, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) worker[i] = at::get_thread_num();
  });
  EXPECT_THAT(worker, ::testing::Contains(0));
  EXPECT_THAT(worker, ::testing::Contains(1));
}

// The mixture's values and every gradient are the same bits on one thread and on two
// (per-block partial sums, added in block order). Candidates whose statistics are exact
// whatever the threads (a range, none): LSQ's initial step is a mean, which ATen's own
// reduction sums in an order that follows the thread count.
TEST(KernelThreadsTest, MixtureDoesNotDependOnTheThreadCount) {
  const std::vector<std::string> specs = {"pact:bits=2,alpha=1.2", "uniform_act:bits=3", "dorefa_act:bits=2"};
  at::manual_seed(8);
  const at::Tensor x = at::randn({32, 16, 24, 24}) * 2;  // 72 blocks: work for both threads
  const at::Tensor logits = at::randn({3});
  const at::Tensor g = at::randn({32, 16, 24, 24});
  ThreadsForTest threads(1);
  const Grads one = quantizers::Run(true, specs, x, logits, g);
  threads.Set(2);
  const Grads two = quantizers::Run(true, specs, x, logits, g);
  ExpectSameBits(one, two, "1 thread against 2");
}

}  // namespace
}  // namespace qsearch::quantizers
