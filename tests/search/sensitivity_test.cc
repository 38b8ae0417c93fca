// The sensitivity model and its uses on slices of the real Fashion-MNIST: the fast
// search mode (no QSS/QPL epochs), the four baselines of a job, the exact rounding after
// QPL, QSS alone keeping its candidates' width, and QPL started from the allocation.
#include <set>

#include <torch/torch.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "common/status_macros.h"
#include "search/job.h"
#include "search/models.h"
#include "search/sensitivity.h"
#include "tests/test_util.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch::search {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct JobRun {
  v1::JobResult result;
  std::vector<v1::JobEvent> events;
  std::set<int> phases;
};

absl::StatusOr<JobRun> RunJob(const v1::JobSpec& spec) {
  JobRun run;
  JobOptions options;
  options.on_event = [&](const v1::JobEvent& e) {
    run.events.push_back(e);
    run.phases.insert(e.phase());
  };
  ASSIGN_OR_RETURN(run.result, RunSearchJob(spec, options));
  return run;
}

TEST(SensitivityTest, FastModeAllocatesWithoutSearchEpochs) {
  v1::JobSpec s = ::qsearch::testing::TinySpec("lenet5");
  s.clear_qss();
  s.clear_qpl();
  s.mutable_qpl()->set_activation_bits(4);
  s.set_search_mode("sensitivity");
  s.mutable_budget()->set_average_weight_bits(2.5);
  ASSERT_OK_AND_ASSIGN(JobRun run, RunJob(s));
  EXPECT_TRUE(run.phases.count(v1::PHASE_ALLOCATE));
  EXPECT_FALSE(run.phases.count(v1::PHASE_QSS));
  EXPECT_FALSE(run.phases.count(v1::PHASE_QPL));
  const v1::Policy& p = run.result.policy();
  EXPECT_LE(p.cost().average_weight_bits(), 2.5 + 1e-9);
  // Half a bit of slack at most: the exact solver spends what the budget allows.
  EXPECT_GT(p.cost().average_weight_bits(), 2.0);
  std::set<double> widths;
  for (const auto& l : p.layers()) {
    if (l.excluded()) continue;
    EXPECT_GT(l.sensitivity(), 0) << l.name();
    EXPECT_EQ(l.activation_bits(), 4) << l.name();
    widths.insert(l.weight_bits());
  }
  EXPECT_GT(widths.size(), 1u) << "2.5 average bits cannot be one integer width";
  EXPECT_GT(run.result.quantized_accuracy(), 40);
  EXPECT_GT(run.result.phase_seconds().at("allocate"), 0);
}

TEST(SensitivityTest, FastModeRefusesSearchEpochs) {
  v1::JobSpec s = ::qsearch::testing::TinySpec("mlp");
  s.set_search_mode("sensitivity");
  auto r = RunSearchJob(s, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("runs no QSS or QPL epochs"));
  s = ::qsearch::testing::TinySpec("mlp");
  s.set_search_mode("greedy");
  EXPECT_THAT(RunSearchJob(s, {}).status().message(), HasSubstr("search_mode must be dnas or sensitivity"));
  s = ::qsearch::testing::TinySpec("mlp");
  s.add_baselines("int8");
  EXPECT_THAT(RunSearchJob(s, {}).status().message(), HasSubstr("unknown baseline 'int8'"));
}

TEST(SensitivityTest, EveryBaselineTrainsAndMeetsTheBudget) {
  v1::JobSpec s = ::qsearch::testing::TinySpec("lenet5");
  s.mutable_budget()->set_average_weight_bits(4);
  s.set_float_baseline(true);  // the old switch, folded into the list
  for (const char* b : {"sensitivity", "uniform_first_last_8", "uniform"}) s.add_baselines(b);
  ASSERT_OK_AND_ASSIGN(JobRun run, RunJob(s));
  const v1::JobResult& r = run.result;
  std::vector<std::string> names;
  for (const auto& b : r.baselines()) names.push_back(b.name());
  EXPECT_THAT(names, ElementsAre("float", "uniform", "uniform_first_last_8", "sensitivity"));
  for (int p : {v1::PHASE_FLOAT_BASELINE, v1::PHASE_BASELINE, v1::PHASE_BASELINE_FIRST_LAST_8,
                v1::PHASE_BASELINE_SENSITIVITY}) {
    EXPECT_TRUE(run.phases.count(p)) << p;
  }
  EXPECT_EQ(r.float_baseline_accuracy(), r.baselines(0).accuracy());
  EXPECT_EQ(r.uniform_accuracy(), r.baselines(1).accuracy());
  EXPECT_EQ(r.uniform_weight_bits(), 4);
  for (const auto& b : r.baselines()) {
    EXPECT_GT(b.accuracy(), 30) << b.name();
    if (b.name() == "float") {
      EXPECT_FALSE(b.has_policy());
      continue;
    }
    EXPECT_LE(b.policy().cost().average_weight_bits(), 4 + 1e-9) << b.name();
    EXPECT_EQ(b.policy().quantized_accuracy(), b.accuracy());
  }
  // First and last at 8 bits, the rest at the largest uniform width that fits.
  std::vector<double> fl8;
  for (const auto& l : r.baselines(2).policy().layers()) {
    if (!l.excluded()) fl8.push_back(l.weight_bits());
  }
  ASSERT_EQ(fl8.size(), 5u);
  EXPECT_EQ(fl8.front(), 8);
  EXPECT_EQ(fl8.back(), 8);
  EXPECT_EQ(fl8[1], 3);  // 4 does not fit with conv1 and fc3 at 8 bits
  for (const auto& l : r.baselines(3).policy().layers()) {
    if (l.excluded()) continue;
    EXPECT_GT(l.sensitivity(), 0) << l.name();
    EXPECT_EQ(l.weight().scheme(), "uniform") << l.name();
  }
  EXPECT_EQ(r.phase_seconds().count("baseline_sensitivity"), 1u);
}

TEST(SensitivityTest, FirstLast8IsSkippedWhenItCannotFit) {
  v1::JobSpec s = ::qsearch::testing::TinySpec("mlp");
  s.mutable_budget()->set_average_weight_bits(2);
  s.add_baselines("uniform_first_last_8");
  ASSERT_OK_AND_ASSIGN(JobRun run, RunJob(s));
  EXPECT_EQ(run.result.baselines_size(), 0);
  ASSERT_FALSE(run.result.warnings().empty());
  EXPECT_THAT(run.result.warnings(0), HasSubstr("uniform_first_last_8 skipped"));
}

TEST(SensitivityTest, QssAloneKeepsTheCandidatesWidthAndQplRoundsExactly) {
  v1::JobSpec s = ::qsearch::testing::TinySpec("lenet5");
  s.mutable_qpl()->set_epochs(0);
  s.mutable_qpl()->set_init("candidate");  // QSS alone: no allocation after it
  ASSERT_OK_AND_ASSIGN(JobRun qss_only, RunJob(s));
  for (const auto& l : qss_only.result.policy().layers()) {
    if (!l.excluded()) EXPECT_EQ(l.weight_bits(), 3) << l.name();
  }
  s = ::qsearch::testing::TinySpec("lenet5");
  s.mutable_budget()->set_average_weight_bits(2.5);
  s.mutable_qpl()->set_init("sensitivity");
  ASSERT_OK_AND_ASSIGN(JobRun mixed, RunJob(s));
  const v1::Policy& p = mixed.result.policy();
  EXPECT_LE(p.cost().average_weight_bits(), 2.5 + 1e-9);
  // The budget is spent: no layer below 8 bits could take one more bit and still fit.
  std::int64_t total = 0;
  for (const auto& l : p.layers()) total += l.excluded() ? 0 : l.params();
  for (const auto& l : p.layers()) {
    if (l.excluded()) continue;
    EXPECT_GT(l.sensitivity(), 0) << l.name();
    if (l.weight_bits() < 8) {
      EXPECT_GT(p.cost().average_weight_bits() + static_cast<double>(l.params()) / total, 2.5 + 1e-9) << l.name();
    }
  }
  bool rounded = false;
  for (const auto& e : mixed.events) {
    if (e.phase() == v1::PHASE_QPL && absl::StrContains(e.message(), "exactly")) rounded = true;
  }
  EXPECT_TRUE(rounded);
}

// At an average of 2 bits a floor of 2 leaves nothing to allocate; the default floor of 1
// lets the allocation mix widths where the scheme has a 1-bit form, within the budget.
TEST(SensitivityTest, DefaultPipelineMixesOneBitLayersAtTwoBitsAverage) {
  v1::JobSpec s = ::qsearch::testing::TinySpec("lenet5");
  s.mutable_budget()->set_average_weight_bits(2);
  s.mutable_qpl()->clear_epochs();  // the default pipeline: QSS, then the exact allocation
  s.mutable_qss()->add_weight_candidates("ul2q:bits=2,granularity=channel");  // has a 1-bit form
  s.add_baselines("sensitivity");
  ASSERT_OK_AND_ASSIGN(JobRun mixed, RunJob(s));
  // The sensitivity baseline's uniform grids stop at 2 bits (their 1-bit form keeps one
  // sign): at an average of 2 that is every layer at 2.
  ASSERT_EQ(mixed.result.baselines_size(), 1);
  for (const auto& l : mixed.result.baselines(0).policy().layers()) {
    if (!l.excluded()) EXPECT_EQ(l.weight_bits(), 2) << l.name();
  }
  const v1::Policy& p = mixed.result.policy();
  EXPECT_LE(p.cost().average_weight_bits(), 2 + 1e-9);
  std::set<double> widths;
  for (const auto& l : p.layers()) {
    if (l.excluded()) continue;
    EXPECT_EQ(l.weight().scheme(), "ul2q") << l.name();
    EXPECT_GE(l.weight_bits(), 1) << l.name();
    widths.insert(l.weight_bits());
  }
  EXPECT_EQ(widths.count(1.0), 1u) << "no layer at 1 bit";
  EXPECT_GT(*widths.rbegin(), 2) << "the bits saved went nowhere";

  s.clear_baselines();
  s.mutable_qpl()->set_min_bits(2);  // the old floor: nothing to mix
  ASSERT_OK_AND_ASSIGN(JobRun floor2, RunJob(s));
  for (const auto& l : floor2.result.policy().layers()) {
    if (!l.excluded()) EXPECT_EQ(l.weight_bits(), 2) << l.name();
  }
}

// The per-batch term of the Fisher, which QSS's last batches also add up for the default
// pipeline: each layer's mean squared weight gradient, added to what the sum held; a layer
// without a gradient (frozen, or not reached) adds nothing.
TEST(SensitivityTest, SquaredGradientsAddEachLayersMeanSquare) {
  torch::manual_seed(3);
  ASSERT_OK_AND_ASSIGN(auto model, BuildModel("lenet5", {1, 28, 28, 10}));
  const auto layers = model->QuantLayers();
  ASSERT_EQ(layers.size(), 5u);
  torch::cross_entropy_loss(model->forward(torch::randn({8, 1, 28, 28})), torch::randint(0, 10, {8})).backward();
  layers[2].second->weight().mutable_grad() = at::Tensor();  // fc1: no gradient this batch
  std::vector<double> sums(layers.size(), 0.25);
  AddSquaredGradients(layers, &sums);
  for (size_t l = 0; l < layers.size(); ++l) {
    if (l == 2) {
      EXPECT_EQ(sums[l], 0.25);
      continue;
    }
    const at::Tensor g = layers[l].second->weight().grad();
    ASSERT_TRUE(g.defined()) << layers[l].first;
    const double mean_square = (g.to(at::kDouble) * g.to(at::kDouble)).mean().item<double>();
    EXPECT_GT(mean_square, 0) << layers[l].first;
    EXPECT_NEAR(sums[l], 0.25 + mean_square, 1e-5 * mean_square + 1e-12) << layers[l].first;
  }
  std::vector<double> fresh;  // an empty sum is sized to the layers
  AddSquaredGradients(layers, &fresh);
  ASSERT_EQ(fresh.size(), layers.size());
  EXPECT_EQ(fresh[2], 0);
  EXPECT_EQ(fresh[0] + 0.25, sums[0]);
}

}  // namespace
}  // namespace qsearch::search
