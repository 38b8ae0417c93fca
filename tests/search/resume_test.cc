// Checkpoint and resume: a job stopped at the end of any epoch (here: by cancel, as a
// crash or SIGTERM would) continues from its checkpoint with no epoch lost or repeated
// and ends with exactly the result of a run that was never stopped.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include "search/checkpoint.h"
#include "search/data.h"
#include "search/job.h"
#include "tests/test_util.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;

// Every phase twice, the baselines that fit: every place a job can stop.
v1::JobSpec ResumableSpec() {
  v1::JobSpec s = ::qsearch::testing::TinySpec("mlp", 2);
  s.mutable_dataset()->set_seed(3);
  s.set_uniform_baseline(true);
  s.set_float_baseline(true);
  s.add_baselines("sensitivity");
  s.set_seed(11);
  return s;
}

using ::qsearch::testing::FreshDir;

// (phase, epoch) of every completed epoch, in order.
std::vector<std::pair<int, int>> EpochsDone(const std::vector<v1::JobEvent>& events) {
  std::vector<std::pair<int, int>> out;
  for (const auto& e : events) {
    if (e.epoch_end()) out.emplace_back(e.phase(), e.epoch());
  }
  return out;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class ResumeTest : public ::testing::TestWithParam<v1::Phase> {};

TEST_P(ResumeTest, StoppedRunResumesWithNoLostEpochsAndTheSameResult) {
  ASSERT_TRUE(std::filesystem::exists(std::string(kDefaultFashionMnistDir) + "/train-images-idx3-ubyte.gz"));
  const v1::JobSpec spec = ResumableSpec();

  std::vector<v1::JobEvent> whole;
  JobOptions straight;
  straight.out_dir = FreshDir("qsearch_resume_straight");
  straight.on_event = [&](const v1::JobEvent& e) { whole.push_back(e); };
  auto expected = RunSearchJob(spec, straight);
  ASSERT_OK(expected);
  EXPECT_FALSE(std::filesystem::exists(straight.out_dir + "/checkpoint.pt")) << "removed when done";

  // Stop right after the first epoch of the phase under test.
  const std::string dir = FreshDir("qsearch_resume_split");
  std::atomic<bool> cancel{false};
  std::vector<v1::JobEvent> first;
  JobOptions part1;
  part1.out_dir = dir;
  part1.cancel = &cancel;
  part1.on_event = [&](const v1::JobEvent& e) {
    first.push_back(e);
    if (e.phase() == GetParam() && e.epoch_end()) cancel = true;
  };
  auto stopped = RunSearchJob(spec, part1);
  ASSERT_EQ(stopped.status().code(), absl::StatusCode::kCancelled) << stopped.status();
  ASSERT_TRUE(std::filesystem::exists(dir + "/checkpoint.pt"));
  ASSERT_OK_AND_ASSIGN(CheckpointData ckpt, ReadCheckpoint(dir + "/checkpoint.pt"));
  EXPECT_EQ(ckpt.state.phase(), GetParam());
  EXPECT_EQ(ckpt.state.next_epoch(), 1);

  std::vector<v1::JobEvent> second;
  JobOptions part2;
  part2.out_dir = dir;
  part2.resume = true;
  part2.on_event = [&](const v1::JobEvent& e) { second.push_back(e); };
  auto resumed = RunSearchJob(spec, part2);
  ASSERT_OK(resumed);
  EXPECT_TRUE(resumed->resumed());

  // Numbered events: the first run's up to its checkpoint, then the second run's, number on
  // without a gap; together they complete every epoch exactly once, in the uninterrupted
  // order. The resumption's own events (loading, "resumed") are unnumbered.
  std::vector<v1::JobEvent> joined;
  for (const auto& e : first) {
    if (e.sequence() <= ckpt.state.sequence()) joined.push_back(e);
  }
  std::vector<std::string> unnumbered;
  for (const auto& e : second) {
    if (e.sequence() == 0) unnumbered.push_back(e.message());
    else joined.push_back(e);
  }
  for (size_t i = 1; i < joined.size(); ++i) ASSERT_EQ(joined[i].sequence(), joined[i - 1].sequence() + 1) << i;
  EXPECT_EQ(EpochsDone(joined), EpochsDone(whole));
  ASSERT_EQ(unnumbered.size(), 2u);
  EXPECT_THAT(unnumbered[1], HasSubstr("resumed from checkpoint"));
  // The numbered events are the very ones the uninterrupted run emitted.
  ASSERT_EQ(joined.size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    EXPECT_EQ(joined[i].phase(), whole[i].phase()) << i;
    EXPECT_EQ(joined[i].epoch(), whole[i].epoch()) << i;
    EXPECT_EQ(joined[i].message(), whole[i].message()) << i;
  }

  // Same batches, same noise, same optimiser state: the same figures.
  EXPECT_DOUBLE_EQ(resumed->float_accuracy(), expected->float_accuracy());
  EXPECT_DOUBLE_EQ(resumed->quantized_accuracy(), expected->quantized_accuracy());
  EXPECT_DOUBLE_EQ(resumed->uniform_accuracy(), expected->uniform_accuracy());
  EXPECT_DOUBLE_EQ(resumed->float_baseline_accuracy(), expected->float_baseline_accuracy());
  ASSERT_EQ(resumed->baselines_size(), 3);
  ASSERT_EQ(expected->baselines_size(), 3);
  for (int b = 0; b < 3; ++b) {
    EXPECT_EQ(resumed->baselines(b).name(), expected->baselines(b).name());
    EXPECT_DOUBLE_EQ(resumed->baselines(b).accuracy(), expected->baselines(b).accuracy()) << b;
    const auto &rp = resumed->baselines(b).policy(), &ep = expected->baselines(b).policy();
    ASSERT_EQ(rp.layers_size(), ep.layers_size());
    for (int l = 0; l < ep.layers_size(); ++l) EXPECT_EQ(rp.layers(l).weight().spec(), ep.layers(l).weight().spec());
  }
  ASSERT_EQ(resumed->policy().layers_size(), expected->policy().layers_size());
  for (int l = 0; l < expected->policy().layers_size(); ++l) {
    EXPECT_EQ(resumed->policy().layers(l).weight().spec(), expected->policy().layers(l).weight().spec());
    EXPECT_EQ(resumed->policy().layers(l).activation().spec(), expected->policy().layers(l).activation().spec());
  }
  // The artifacts are byte for byte the uninterrupted run's (result.json differs: it says
  // the job resumed, and wall times).
  for (const char* file : {"policy.json", "config_list.json", "quantized.pt"}) {
    EXPECT_EQ(ReadBytes(dir + "/" + file), ReadBytes(straight.out_dir + "/" + file)) << file;
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/checkpoint.pt"));
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(straight.out_dir);
}

INSTANTIATE_TEST_SUITE_P(EveryTrainingPhase, ResumeTest,
                         ::testing::Values(v1::PHASE_PRETRAIN, v1::PHASE_QSS, v1::PHASE_QPL, v1::PHASE_FINETUNE,
                                           v1::PHASE_FLOAT_BASELINE, v1::PHASE_BASELINE,
                                           v1::PHASE_BASELINE_SENSITIVITY),
                         [](const auto& info) { return v1::Phase_Name(info.param); });

TEST(ResumeOptionsTest, SensitivityModeResumesInFineTuningWithTheSameAllocation) {
  v1::JobSpec spec = ResumableSpec();
  spec.set_search_mode("sensitivity");
  spec.mutable_qss()->set_epochs(0);
  spec.mutable_qpl()->set_epochs(0);
  spec.clear_baselines();
  spec.set_uniform_baseline(false);
  spec.set_float_baseline(false);
  JobOptions straight;
  straight.out_dir = FreshDir("qsearch_resume_sens_straight");
  ASSERT_OK_AND_ASSIGN(v1::JobResult expected, RunSearchJob(spec, straight));
  const std::string dir = FreshDir("qsearch_resume_sens_split");
  std::atomic<bool> cancel{false};
  JobOptions part1;
  part1.out_dir = dir;
  part1.cancel = &cancel;
  part1.on_event = [&](const v1::JobEvent& e) {
    if (e.phase() == v1::PHASE_FINETUNE && e.epoch_end()) cancel = true;
  };
  ASSERT_EQ(RunSearchJob(spec, part1).status().code(), absl::StatusCode::kCancelled);
  JobOptions part2;
  part2.out_dir = dir;
  part2.resume = true;
  int allocations = 0;
  part2.on_event = [&](const v1::JobEvent& e) { allocations += e.phase() == v1::PHASE_ALLOCATE; };
  ASSERT_OK_AND_ASSIGN(v1::JobResult resumed, RunSearchJob(spec, part2));
  EXPECT_TRUE(resumed.resumed());
  EXPECT_EQ(allocations, 0);  // the checkpoint's allocation, not a second one
  EXPECT_DOUBLE_EQ(resumed.quantized_accuracy(), expected.quantized_accuracy());
  ASSERT_EQ(resumed.policy().layers_size(), expected.policy().layers_size());
  for (int l = 0; l < expected.policy().layers_size(); ++l) {
    EXPECT_EQ(resumed.policy().layers(l).weight().spec(), expected.policy().layers(l).weight().spec());
  }
  for (const char* file : {"policy.json", "quantized.pt"}) {
    EXPECT_EQ(ReadBytes(dir + "/" + file), ReadBytes(straight.out_dir + "/" + file)) << file;
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(straight.out_dir);
}

// The default pipeline (no QPL epochs): a job stopped between QSS and the allocation
// measures the same sensitivities and allocates the same widths when it resumes.
TEST(ResumeOptionsTest, DefaultPipelineResumedAfterQssAllocatesWithTheSameSensitivities) {
  v1::JobSpec spec = ResumableSpec();
  spec.mutable_qpl()->clear_epochs();  // the default: QSS, then the exact allocation
  spec.clear_baselines();
  spec.set_uniform_baseline(false);
  spec.set_float_baseline(false);
  JobOptions straight;
  straight.out_dir = FreshDir("qsearch_resume_default_straight");
  ASSERT_OK_AND_ASSIGN(v1::JobResult expected, RunSearchJob(spec, straight));
  const std::string dir = FreshDir("qsearch_resume_default_split");
  std::atomic<bool> cancel{false};
  JobOptions part1;
  part1.out_dir = dir;
  part1.cancel = &cancel;
  part1.on_event = [&](const v1::JobEvent& e) {
    if (e.phase() == v1::PHASE_QSS && e.epoch_end() && e.epoch() + 1 == spec.qss().epochs()) cancel = true;
  };
  ASSERT_EQ(RunSearchJob(spec, part1).status().code(), absl::StatusCode::kCancelled);
  JobOptions part2;
  part2.out_dir = dir;
  part2.resume = true;
  int qss_epochs = 0;
  part2.on_event = [&](const v1::JobEvent& e) { qss_epochs += e.phase() == v1::PHASE_QSS && e.epoch_end(); };
  ASSERT_OK_AND_ASSIGN(v1::JobResult resumed, RunSearchJob(spec, part2));
  EXPECT_TRUE(resumed.resumed());
  EXPECT_EQ(qss_epochs, 0);  // QSS had finished: nothing of it runs again
  ASSERT_EQ(resumed.policy().layers_size(), expected.policy().layers_size());
  ASSERT_GT(expected.policy().layers_size(), 0);
  for (int l = 0; l < expected.policy().layers_size(); ++l) {
    const auto &r = resumed.policy().layers(l), &x = expected.policy().layers(l);
    EXPECT_EQ(r.weight().spec(), x.weight().spec()) << l;
    EXPECT_GT(x.sensitivity(), 0) << l;
    EXPECT_TRUE(std::isfinite(x.sensitivity())) << l;
    EXPECT_DOUBLE_EQ(r.sensitivity(), x.sensitivity()) << l;
  }
  EXPECT_DOUBLE_EQ(resumed.quantized_accuracy(), expected.quantized_accuracy());
  for (const char* file : {"policy.json", "quantized.pt"}) {
    EXPECT_EQ(ReadBytes(dir + "/" + file), ReadBytes(straight.out_dir + "/" + file)) << file;
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(straight.out_dir);
}

TEST(ResumeOptionsTest, ResumesUnderAnotherThreadCount) {
  // Threads are the worker's, not the job's: a checkpoint written with 1 thread resumes
  // with 2 (another machine, another --threads-per-worker).
  const std::string dir = FreshDir("qsearch_resume_threads");
  std::atomic<bool> cancel{false};
  JobOptions one;
  one.out_dir = dir;
  one.threads = 1;
  one.cancel = &cancel;
  one.on_event = [&](const v1::JobEvent& e) {
    if (e.phase() == v1::PHASE_QSS && e.epoch_end()) cancel = true;
  };
  const v1::JobSpec spec = ResumableSpec();
  ASSERT_EQ(RunSearchJob(spec, one).status().code(), absl::StatusCode::kCancelled);
  JobOptions two;
  two.out_dir = dir;
  two.threads = 2;
  two.resume = true;
  ASSERT_OK_AND_ASSIGN(v1::JobResult r, RunSearchJob(spec, two));
  EXPECT_TRUE(r.resumed());
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_LE(r.policy().cost().average_weight_bits(), 3 + 1e-9);
  std::filesystem::remove_all(dir);
}

TEST(ResumeErrorsTest, CheckpointOfAnotherSpecOrCorruptFileIsRefused) {
  const std::string dir = FreshDir("qsearch_resume_errors");
  std::atomic<bool> cancel{false};
  JobOptions options;
  options.out_dir = dir;
  options.cancel = &cancel;
  options.on_event = [&](const v1::JobEvent& e) {
    if (e.epoch_end()) cancel = true;
  };
  v1::JobSpec spec = ResumableSpec();
  ASSERT_EQ(RunSearchJob(spec, options).status().code(), absl::StatusCode::kCancelled);
  options.cancel = nullptr;
  options.on_event = nullptr;
  options.resume = true;
  v1::JobSpec other = spec;
  other.set_seed(12);
  auto r = RunSearchJob(other, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("different job spec"));

  // Truncate the checkpoint: a clear DataLoss, not a crash.
  const auto size = std::filesystem::file_size(dir + "/checkpoint.pt");
  std::filesystem::resize_file(dir + "/checkpoint.pt", size / 2);
  r = RunSearchJob(spec, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr("corrupt or truncated"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qsearch::search
