// The real-data benchmark of issue 3: lenet5 and resnet20 on the real Fashion-MNIST,
// budget = average 3 weight bits with 4-bit activations. Each run trains, under one
// schedule, the float model, the uniform-width baseline at the same budget and qsearch's
// mixed policy, and reports test accuracy of each, the policy and wall time per phase.
//
// Run: build/bench/real_search_bench [--seeds N] [--models lenet5,resnet20] [--quick]
// The default preset (documented in docs/benchmarks.md) takes about 30 minutes on 2 cores.
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "search/job.h"

namespace {

using qsearch::v1::JobSpec;

struct Preset {
  std::int64_t train, val, test;
  int pretrain, qss, qpl, finetune;
};

// Subset sizes and epochs per model: chosen so lenet5 (x3 seeds) and resnet20 (x2) fit in
// about 30 minutes on 2 cores.
Preset PresetFor(const std::string& model, bool quick) {
  if (quick) return {2000, 500, 2000, 1, 1, 1, 1};
  if (model == "resnet20") return {10000, 1000, 10000, 4, 2, 2, 3};
  return {20000, 2000, 10000, 3, 2, 2, 3};
}

JobSpec MakeSpec(const std::string& model, std::uint64_t seed, bool quick) {
  const Preset p = PresetFor(model, quick);
  JobSpec s;
  s.set_model(model);
  s.mutable_dataset()->set_kind("fashion_mnist");
  s.mutable_dataset()->set_train_size(p.train);
  s.mutable_dataset()->set_val_size(p.val);
  s.mutable_dataset()->set_test_size(p.test);
  s.mutable_dataset()->set_seed(seed);
  s.mutable_budget()->set_average_weight_bits(3);
  s.mutable_qpl()->set_activation_bits(4);
  s.mutable_qss()->set_bilevel(true);
  s.set_pretrain_epochs(p.pretrain);
  s.mutable_qss()->set_epochs(p.qss);
  s.mutable_qpl()->set_epochs(p.qpl);
  s.set_finetune_epochs(p.finetune);
  s.set_batch_size(128);
  s.set_uniform_baseline(true);
  s.set_float_baseline(true);
  s.set_seed(seed);
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

std::string PolicySummary(const qsearch::v1::Policy& p) {
  std::vector<std::string> parts;
  for (const auto& l : p.layers()) {
    if (l.excluded()) continue;
    parts.push_back(absl::StrFormat("%s=%s%d", l.name(), l.weight().scheme(), static_cast<int>(l.weight_bits())));
  }
  return absl::StrJoin(parts, " ");
}

}  // namespace

int main(int argc, char** argv) {
  int seeds = 0;
  bool quick = false;
  std::vector<std::string> models = {"lenet5", "resnet20"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--seeds" && i + 1 < argc) seeds = std::stoi(argv[++i]);
    else if (a == "--models" && i + 1 < argc) models = absl::StrSplit(argv[++i], ',');
    else {
      std::fprintf(stderr, "usage: real_search_bench [--seeds N] [--models lenet5,resnet20] [--quick]\n");
      return 2;
    }
  }
  std::printf("| model | seed | float (pre-train) | float (same schedule) | uniform 3-bit | qsearch mixed | mixed avg bits | wall s (pre/qss/qpl/ft/float/uniform) | policy |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::map<std::string, std::vector<double>> gain, to_float;
  for (const auto& model : models) {
    const int n = seeds > 0 ? seeds : (model == "resnet20" ? 2 : 3);
    for (int seed = 1; seed <= n; ++seed) {
      qsearch::search::JobOptions options;
      options.threads = 2;
      auto r = qsearch::search::RunSearchJob(MakeSpec(model, seed, quick), options);
      if (!r.ok()) {
        std::fprintf(stderr, "%s seed %d: %s\n", model.c_str(), seed, r.status().ToString().c_str());
        return 1;
      }
      const auto& t = r->phase_seconds();
      auto sec = [&](const char* k) { return t.count(k) ? t.at(k) : 0.0; };
      std::printf("| %s | %d | %.2f | %.2f | %.2f | %.2f | %.3f | %.0f/%.0f/%.0f/%.0f/%.0f/%.0f | %s |\n", model.c_str(),
                  seed, r->float_accuracy(), r->float_baseline_accuracy(), r->uniform_accuracy(),
                  r->quantized_accuracy(), r->policy().cost().average_weight_bits(), sec("pretrain"), sec("qss"),
                  sec("qpl"), sec("finetune"), sec("float_baseline"), sec("baseline"),
                  PolicySummary(r->policy()).c_str());
      std::fflush(stdout);
      gain[model].push_back(r->quantized_accuracy() - r->uniform_accuracy());
      to_float[model].push_back(r->quantized_accuracy() - r->float_baseline_accuracy());
    }
  }
  std::printf("\n| model | runs | median (mixed - uniform) | median (mixed - float, same schedule) |\n|---|---|---|---|\n");
  for (const auto& model : models) {
    std::printf("| %s | %zu | %+.2f | %+.2f |\n", model.c_str(), gain[model].size(), Median(gain[model]),
                Median(to_float[model]));
  }
  return 0;
}
