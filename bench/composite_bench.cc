// Fused composite quantization vs the unfused sum of K separate quantizers, forward plus
// backward, on a conv weight and an activation. Run: build/bench/composite_bench
// Prints time per element for each and a fused/unfused ratio per tensor.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/autograd.h>

#include "quantizers/composite.h"

namespace qsearch::quantizers {
namespace {

const std::vector<std::string> kWeightCandidates = {"uniform:bits=4,granularity=channel",
                                                    "esb:bits=4,k=1", "ternary", "pot:bits=3"};
const std::vector<std::string> kActCandidates = {"uniform_act:bits=4", "pact:bits=4,alpha=3",
                                                 "lsq_act:bits=4", "dorefa_act:bits=2"};

std::vector<std::shared_ptr<Quantizer>> Make(const std::vector<std::string>& specs) {
  std::vector<std::shared_ptr<Quantizer>> out;
  for (const auto& s : specs) out.push_back(*MakeQuantizer(s));
  return out;
}

void Mixture(benchmark::State& state, bool fused, bool activation) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  const std::vector<int64_t> shape =
      activation ? std::vector<int64_t>{32, 64, 32, 32} : std::vector<int64_t>{64, 64, 3, 3};
  auto qs = Make(activation ? kActCandidates : kWeightCandidates);
  at::manual_seed(0);
  at::Tensor x = at::randn(shape).requires_grad_(true);
  at::Tensor logits = at::zeros({4}).requires_grad_(true);
  at::Tensor g = at::randn(shape);
  for (auto _ : state) {
    at::Tensor pi = at::softmax(logits, 0);
    at::Tensor out;
    if (fused) {
      out = *CompositeQuantize(x, qs, pi);
    } else {
      out = pi[0] * qs[0]->forward(x);
      for (size_t i = 1; i < qs.size(); ++i) out = out + pi[i] * qs[i]->forward(x);
    }
    out.backward(g);
    x.mutable_grad().reset();
    logits.mutable_grad().reset();
    benchmark::DoNotOptimize(out.data_ptr<float>());
  }
  const double elements = static_cast<double>(x.numel()) * state.iterations();
  state.counters["ns_per_elem"] = benchmark::Counter(
      elements, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["ns_per_elem"] = benchmark::Counter(
      elements * 1e-9, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_WeightFused(benchmark::State& s) { Mixture(s, true, false); }
void BM_WeightUnfused(benchmark::State& s) { Mixture(s, false, false); }
void BM_ActivationFused(benchmark::State& s) { Mixture(s, true, true); }
void BM_ActivationUnfused(benchmark::State& s) { Mixture(s, false, true); }

BENCHMARK(BM_WeightFused)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->MinTime(1.0);
BENCHMARK(BM_WeightUnfused)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->MinTime(1.0);
BENCHMARK(BM_ActivationFused)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_ActivationUnfused)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace
}  // namespace qsearch::quantizers

BENCHMARK_MAIN();
