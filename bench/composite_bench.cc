// Fused composite quantization vs unfused forms, forward + backward, 4 candidates, on a
// 64x64x3x3 conv weight and a 32x64x32x32 activation. Run: build/bench/composite_bench
//
//   Fused     one pass over x evaluating all K candidates (CompositeQuantize)
//   Aten      the unfused form: K candidate op chains in plain ATen plus K-1 weighted adds,
//             the way a PyTorch implementation composes them
//   PerCand   K separate single-candidate kernel calls plus K-1 weighted adds
//
// All three share each candidate's statistics step (Prepare). FusedBaseline is Fused
// with the kernels' x86-64 baseline copy instead of the AVX2 one (point_kernel.h), what
// every CPU ran before; AtenForms is Fused through the kernels' ATen forms (the path of
// a CUDA tensor). Prints time per element, then speed-up ratios measured in this run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/autograd.h>

#include <cstdio>
#include <map>
#include <set>

#include "quantizers/composite.h"
#include "quantizers/point_kernel.h"
#include "quantizers/testing/reference_ops.h"

namespace qsearch::quantizers {
namespace {

const std::vector<std::string> kWeightCandidates = {"uniform:bits=4,granularity=channel",
                                                    "esb:bits=4,k=1", "ternary", "pot:bits=3"};
const std::vector<std::string> kActCandidates = {"uniform_act:bits=4", "pact:bits=4,alpha=3",
                                                 "lsq_act:bits=4", "dorefa_act:bits=2"};

enum class Mode { kFused, kAten, kPerCandidate };

void Mixture(benchmark::State& state, Mode mode, bool activation) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  const std::vector<int64_t> shape =
      activation ? std::vector<int64_t>{32, 64, 32, 32} : std::vector<int64_t>{64, 64, 3, 3};
  std::vector<std::shared_ptr<Quantizer>> qs;
  for (const auto& s : activation ? kActCandidates : kWeightCandidates) {
    qs.push_back(*MakeQuantizer(s));
  }
  at::manual_seed(0);
  at::Tensor x = at::randn(shape).requires_grad_(true);
  at::Tensor logits = at::zeros({4}).requires_grad_(true);
  at::Tensor g = at::randn(shape);
  for (auto _ : state) {
    at::Tensor pi = at::softmax(logits, 0);
    at::Tensor out;
    if (mode == Mode::kFused) {
      out = *CompositeQuantize(x, qs, pi);
    } else {
      for (size_t i = 0; i < qs.size(); ++i) {
        PointForm f = qs[i]->Prepare(x);
        at::Tensor qi = mode == Mode::kAten ? testing::ReferenceQuantize(f, x)
                                            : MixForms(x, {f}, at::ones({1}));
        out = i == 0 ? pi[i] * qi : out + pi[i] * qi;
      }
    }
    out.backward(g);
    x.mutable_grad().reset();
    logits.mutable_grad().reset();
    benchmark::DoNotOptimize(out.data_ptr<float>());
  }
  // Seconds per element, printed with an SI prefix ("15.4n" = 15.4 ns).
  state.counters["time_per_elem"] = benchmark::Counter(
      static_cast<double>(x.numel()) * state.iterations(),
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void Baseline(benchmark::State& state, bool activation) {
  const KernelIsa before = ActiveKernelIsa();
  SetKernelIsaForTesting(KernelIsa::kBaseline);
  Mixture(state, Mode::kFused, activation);
  SetKernelIsaForTesting(before);
}

// The fused path with the kernels' ATen forms (point_aten.cc): what a tensor on a CUDA
// device runs, measured here on the CPU.
void AtenForms(benchmark::State& state, bool activation) {
  const KernelIsa before = ActiveKernelIsa();
  SetKernelIsaForTesting(KernelIsa::kAten);
  Mixture(state, Mode::kFused, activation);
  SetKernelIsaForTesting(before);
}
void BM_WeightAtenForms(benchmark::State& s) { AtenForms(s, false); }
void BM_ActivationAtenForms(benchmark::State& s) { AtenForms(s, true); }
void BM_WeightFused(benchmark::State& s) { Mixture(s, Mode::kFused, false); }
void BM_WeightFusedBaseline(benchmark::State& s) { Baseline(s, false); }
void BM_ActivationFusedBaseline(benchmark::State& s) { Baseline(s, true); }
void BM_WeightAten(benchmark::State& s) { Mixture(s, Mode::kAten, false); }
void BM_WeightPerCand(benchmark::State& s) { Mixture(s, Mode::kPerCandidate, false); }
void BM_ActivationFused(benchmark::State& s) { Mixture(s, Mode::kFused, true); }
void BM_ActivationAten(benchmark::State& s) { Mixture(s, Mode::kAten, true); }
void BM_ActivationPerCand(benchmark::State& s) { Mixture(s, Mode::kPerCandidate, true); }

BENCHMARK(BM_WeightFused)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_WeightAten)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_WeightPerCand)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_WeightFusedBaseline)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_WeightAtenForms)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->MinTime(0.5);
BENCHMARK(BM_ActivationFused)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_ActivationFusedBaseline)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_ActivationAtenForms)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_ActivationAten)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_ActivationPerCand)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(1.0);

// Console output plus each run's real time, for the ratio table.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    // With --benchmark_repetitions the median aggregate replaces single iterations.
    for (const Run& r : runs) {
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.run_type != Run::RT_Iteration && !median) continue;
      std::string name = r.run_name.function_name + "/" + r.run_name.args;
      if (median || !have_median_.count(name)) times_[name] = r.GetAdjustedRealTime();
      if (median) have_median_.insert(name);
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void PrintRatios() const {
    std::printf("\nspeed-up of the fused composite (baseline time / fused time):\n");
    for (const char* tensor : {"Weight", "Activation"}) {
      for (const char* threads : {"1", "2"}) {
        const std::string suffix = std::string("/") + threads;
        auto f = times_.find(std::string("BM_") + tensor + "Fused" + suffix);
        auto a = times_.find(std::string("BM_") + tensor + "Aten" + suffix);
        auto p = times_.find(std::string("BM_") + tensor + "PerCand" + suffix);
        auto b = times_.find(std::string("BM_") + tensor + "FusedBaseline" + suffix);
        if (f == times_.end() || a == times_.end() || p == times_.end()) continue;
        std::printf("  %-10s threads=%s  vs unfused ATen: %.2fx   vs per-candidate kernels: %.2fx", tensor,
                    threads, a->second / f->second, p->second / f->second);
        if (b != times_.end()) std::printf("   vs its baseline (no AVX2) copy: %.2fx", b->second / f->second);
        auto forms = times_.find(std::string("BM_") + tensor + "AtenForms" + suffix);
        if (forms != times_.end()) std::printf("   vs its ATen forms: %.2fx", forms->second / f->second);
        std::printf("\n");
      }
    }
  }

 private:
  std::map<std::string, double> times_;
  std::set<std::string> have_median_;
};

}  // namespace
}  // namespace qsearch::quantizers

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  qsearch::quantizers::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatios();
  benchmark::Shutdown();
  return 0;
}
