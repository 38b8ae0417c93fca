// The search pipeline end to end on small slices of the real Fashion-MNIST: QSS picks a
// clearly better candidate, QPL moves bits to the budget, the policy meets the budget,
// bad specs fail fast, cancel stops the job.
#include "search/job.h"

#include <unistd.h>

#include <filesystem>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "quantizers/point_kernel.h"
#include "search/data.h"
#include "search/job_context.h"
#include "search/trainer.h"
#include "tests/test_util.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;

v1::JobSpec SmallSpec() {
  v1::JobSpec s = ::qsearch::testing::TinySpec("mlp");
  s.mutable_dataset()->set_train_size(1500);
  s.mutable_dataset()->set_val_size(500);
  s.mutable_dataset()->set_test_size(500);
  s.mutable_dataset()->set_seed(1);
  s.set_seed(7);
  return s;
}

bool HaveFashionMnist() {
  return std::filesystem::exists(std::string(kDefaultFashionMnistDir) + "/train-images-idx3-ubyte.gz");
}

// One process takes a step per batch, the short last one included (QSS counts on it to
// find its last batches).
TEST(JobTest, EpochStepsCountEveryBatch) {
  v1::JobSpec spec;
  spec.set_batch_size(128);
  JobContext job(spec, JobOptions{});
  EXPECT_EQ(EpochSteps(job, 0), 0);
  EXPECT_EQ(EpochSteps(job, 1), 1);
  EXPECT_EQ(EpochSteps(job, 128), 1);
  EXPECT_EQ(EpochSteps(job, 1000), 8);
  EXPECT_EQ(EpochSteps(job, 1024), 8);
  EXPECT_EQ(EpochSteps(job, 1025), 9);
}

TEST(JobTest, PolicyMeetsBudgetAndExportsAreWritten) {
  ASSERT_TRUE(HaveFashionMnist()) << "deploy/install-deps.sh installs dataset-fashion-mnist";
  const std::string out = (std::filesystem::temp_directory_path() / ("qsearch_job_test_" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(out);
  std::vector<v1::JobEvent> events;
  JobOptions options;
  options.out_dir = out;
  options.on_event = [&](const v1::JobEvent& e) { events.push_back(e); };
  auto r = RunSearchJob(SmallSpec(), options);
  ASSERT_OK(r);
  EXPECT_LE(r->policy().cost().average_weight_bits(), 3.0 + 1e-9);
  EXPECT_GE(r->policy().slack().average_weight_bits(), -1e-9);
  EXPECT_EQ(r->policy().layers_size(), 3);
  for (const auto& l : r->policy().layers()) {
    EXPECT_FALSE(l.weight().spec().empty());
    EXPECT_EQ(l.activation_bits(), 4);
  }
  EXPECT_GT(r->float_accuracy(), 50);      // 10 classes: chance is 10%
  EXPECT_GT(r->quantized_accuracy(), 50);
  // Events: increasing sequence numbers, every phase present, the last one DONE.
  ASSERT_FALSE(events.empty());
  for (size_t i = 1; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), events[i - 1].sequence() + 1);
  EXPECT_EQ(events.back().phase(), v1::PHASE_DONE);
  std::set<int> phases;
  for (const auto& e : events) phases.insert(e.phase());
  for (int p : {v1::PHASE_PRETRAIN, v1::PHASE_QSS, v1::PHASE_QPL, v1::PHASE_FINETUNE}) EXPECT_TRUE(phases.count(p)) << p;
  for (const char* f : {"policy.json", "result.json", "config_list.json"}) {
    EXPECT_TRUE(std::filesystem::exists(out + "/" + f)) << f;
  }
  std::ifstream cl(out + "/config_list.json");
  std::string text((std::istreambuf_iterator<char>(cl)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr("\"op_names\": [\"fc1\"]"));
  std::filesystem::remove_all(out);
}

TEST(JobTest, QssPicksTheClearlyBetterCandidate) {
  ASSERT_TRUE(HaveFashionMnist());
  v1::JobSpec s = SmallSpec();
  s.mutable_qss()->add_weight_candidates("pot:bits=2");  // zeroes every weight below max/2
  s.mutable_qss()->add_weight_candidates("uniform:bits=8,granularity=channel");
  s.mutable_qss()->set_epochs(2);
  s.mutable_qss()->set_arch_lr(0.1);
  s.mutable_qss()->set_bilevel(true);
  s.mutable_qpl()->set_epochs(0);
  s.set_finetune_epochs(0);
  s.mutable_budget()->set_average_weight_bits(8);
  // The 10-way classifier is kept in float, as is common; on it the two candidates differ
  // too little for two short epochs to separate them reliably.
  s.set_exclude_last(true);
  auto r = RunSearchJob(s, {});
  ASSERT_OK(r);
  int searched = 0;
  for (const auto& l : r->policy().layers()) {
    if (l.excluded()) continue;
    ++searched;
    EXPECT_EQ(l.weight().scheme(), "uniform") << l.name();
  }
  EXPECT_EQ(searched, 2);
}

// A whole search (QSS, QPL's fractional widths, fine-tuning, export) through the ATen
// forms of the quantizer kernels, the path a CUDA tensor takes: it runs on the CPU here,
// and lands where the fused kernels do (its sums are in double where theirs are float
// lanes, so the paths may part after a few steps).
TEST(JobTest, ASearchThroughTheAtenFormsLandsWhereTheFusedKernelsDo) {
  ASSERT_TRUE(HaveFashionMnist());
  v1::JobSpec s = SmallSpec();
  s.mutable_qpl()->set_epochs(1);
  s.mutable_budget()->set_average_weight_bits(3);
  const quantizers::KernelIsa fused = quantizers::ActiveKernelIsa();
  auto kernel = RunSearchJob(s, {});
  ASSERT_OK(kernel);
  quantizers::SetKernelIsaForTesting(quantizers::KernelIsa::kAten);
  auto aten = RunSearchJob(s, {});
  quantizers::SetKernelIsaForTesting(fused);
  ASSERT_OK(aten);
  EXPECT_LE(aten->policy().cost().average_weight_bits(), 3.0 + 1e-9);
  EXPECT_GT(aten->quantized_accuracy(), 50);
  EXPECT_NEAR(aten->quantized_accuracy(), kernel->quantized_accuracy(), 3.0);
  ASSERT_EQ(aten->policy().layers_size(), kernel->policy().layers_size());
  for (int l = 0; l < aten->policy().layers_size(); ++l) {
    EXPECT_EQ(aten->policy().layers(l).name(), kernel->policy().layers(l).name());
  }
  std::printf("fused %.2f%%, ATen forms %.2f%%\n", kernel->quantized_accuracy(), aten->quantized_accuracy());
}

TEST(JobTest, QplMovesBitsTowardTheBudget) {
  ASSERT_TRUE(HaveFashionMnist());
  v1::JobSpec s = SmallSpec();
  s.mutable_qss()->add_weight_candidates("uniform:bits=6,granularity=channel");
  s.mutable_qpl()->set_epochs(2);
  s.mutable_qpl()->set_penalty_weight(2);
  s.mutable_qpl()->set_bits_lr(0.2);
  s.mutable_budget()->set_average_weight_bits(3);
  double first = 0, last = 0;
  JobOptions options;
  options.on_event = [&](const v1::JobEvent& e) {
    if (e.phase() != v1::PHASE_QPL || !e.has_policy() || e.message().rfind("rounded", 0) == 0) return;
    if (first == 0) first = e.policy().cost().average_weight_bits();
    last = e.policy().cost().average_weight_bits();
  };
  ASSERT_OK(RunSearchJob(s, options));
  EXPECT_LT(first, 5.0);  // moved from the candidate's 6 bits during the first epoch
  EXPECT_NEAR(last, 3.0, 0.5);
}

TEST(JobTest, DefaultPipelineAllocatesWidthsExactlyAfterQss) {
  ASSERT_TRUE(HaveFashionMnist());
  v1::JobSpec s = SmallSpec();
  s.mutable_qpl()->clear_epochs();  // the default: no QPL epochs
  s.mutable_budget()->set_average_weight_bits(3.5);
  std::vector<v1::JobEvent> qpl;
  JobOptions options;
  options.on_event = [&](const v1::JobEvent& e) {
    if (e.phase() == v1::PHASE_QPL) qpl.push_back(e);
  };
  auto r = RunSearchJob(s, options);
  ASSERT_OK(r);
  // One allocation step, no QPL epoch.
  ASSERT_EQ(qpl.size(), 1u);
  EXPECT_EQ(qpl[0].message(), "allocated exactly over the chosen schemes");
  EXPECT_TRUE(r->phase_seconds().count("allocate"));
  EXPECT_FALSE(r->phase_seconds().count("qpl"));
  // The budget holds, and the allocation spends it: 3.5 bits cannot be met by a uniform
  // width, so layers differ.
  EXPECT_LE(r->policy().cost().average_weight_bits(), 3.5 + 1e-9);
  EXPECT_GT(r->policy().cost().average_weight_bits(), 3.0);
  std::set<double> widths;
  for (const auto& l : r->policy().layers()) {
    if (!l.excluded()) widths.insert(l.weight_bits());
  }
  EXPECT_GT(widths.size(), 1u);
}

// Benchmark arms share one pre-training: a job given another job's pre-trained weights
// continues exactly as that job did (same batches, noise and result).
TEST(JobTest, SuppliedPretrainedWeightsContinueLikeTheJobThatMadeThem) {
  const v1::JobSpec spec = ::qsearch::testing::TinySpec("lenet5");
  std::map<std::string, at::Tensor> weights;
  JobOptions own;
  own.on_pretrained = [&](const std::map<std::string, at::Tensor>& state) {
    for (const auto& [name, t] : state) weights[name] = t.clone();
  };
  ASSERT_OK_AND_ASSIGN(v1::JobResult first, RunSearchJob(spec, own));
  ASSERT_FALSE(weights.empty());
  JobOptions reuse;
  reuse.pretrained = &weights;
  ASSERT_OK_AND_ASSIGN(v1::JobResult second, RunSearchJob(spec, reuse));
  EXPECT_EQ(second.float_accuracy(), first.float_accuracy());
  EXPECT_EQ(second.quantized_accuracy(), first.quantized_accuracy());
  ASSERT_EQ(second.policy().layers_size(), first.policy().layers_size());
  for (int l = 0; l < first.policy().layers_size(); ++l) {
    EXPECT_EQ(second.policy().layers(l).weight().spec(), first.policy().layers(l).weight().spec()) << l;
    EXPECT_EQ(second.policy().layers(l).sensitivity(), first.policy().layers(l).sensitivity()) << l;
  }
}

TEST(JobTest, BadSpecsFailFastWithClearErrors) {
  auto code_and_message = [](const v1::JobSpec& s) {
    auto r = RunSearchJob(s, {});
    EXPECT_FALSE(r.ok());
    return std::make_pair(r.status().code(), std::string(r.status().message()));
  };
  v1::JobSpec s = SmallSpec();
  s.set_model("alexnet");
  EXPECT_THAT(code_and_message(s).second, HasSubstr("unknown model 'alexnet'"));
  s = SmallSpec();
  s.mutable_qss()->add_weight_candidates("fancy:bits=3");
  EXPECT_THAT(code_and_message(s).second, HasSubstr("unknown quantizer scheme 'fancy'"));
  s = SmallSpec();
  s.mutable_qss()->add_weight_candidates("pact:bits=3");
  EXPECT_THAT(code_and_message(s).second, HasSubstr("is an activation scheme"));
  s = SmallSpec();
  s.mutable_budget()->set_average_weight_bits(0.5);
  auto [code, msg] = code_and_message(s);
  EXPECT_EQ(code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(msg, HasSubstr("infeasible budget"));
  s = SmallSpec();
  s.mutable_dataset()->set_path("/nonexistent/fashion");
  EXPECT_EQ(code_and_message(s).first, absl::StatusCode::kNotFound);
  s = SmallSpec();
  s.mutable_qpl()->set_penalty("l3");
  EXPECT_THAT(code_and_message(s).second, HasSubstr("l1 or hinge"));
}

TEST(JobTest, CancelStopsTheJob) {
  ASSERT_TRUE(HaveFashionMnist());
  std::atomic<bool> cancel{false};
  JobOptions options;
  options.cancel = &cancel;
  options.on_event = [&](const v1::JobEvent& e) {
    if (e.phase() == v1::PHASE_PRETRAIN) cancel = true;
  };
  v1::JobSpec s = SmallSpec();
  s.set_pretrain_epochs(3);
  auto r = RunSearchJob(s, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace qsearch::search
