// The job's device: which names parse, and what a job asked to run on a GPU this process
// cannot use hears (the CPU build's case; on a CUDA build the GPU cases run instead).
#include "search/device.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "search/job.h"
#include "tests/test_util.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;

int Gpus() { return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0; }

TEST(DeviceTest, OnlyCpuAndCudaWithAnIndexParse) {
  ASSERT_OK_AND_ASSIGN(c10::Device cpu, ParseDevice("cpu"));
  EXPECT_TRUE(cpu.is_cpu());
  ASSERT_OK_AND_ASSIGN(c10::Device cuda, ParseDevice("cuda:12"));  // the name alone: no GPU is asked
  EXPECT_TRUE(cuda.is_cuda());
  EXPECT_EQ(cuda.index(), 12);
  for (const char* bad : {"", "gpu", "CPU", "cpu:0", "cuda", "cuda:", "cuda:-1", "cuda:1x", "cuda:0 ", "cuda:9999",
                          "mps", "meta", "cuda:0,cuda:1", "../cuda:0"}) {
    const auto d = ParseDevice(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "'";
    EXPECT_THAT(d.status().message(), HasSubstr("use cpu or cuda:N")) << "'" << bad << "'";
  }
}

TEST(DeviceTest, AGpuThisProcessCannotUseIsAFailedPreconditionThatSaysWhy) {
  EXPECT_OK(CheckDevice(c10::Device(c10::kCPU)));
  const int gpus = Gpus();
  const absl::Status past = CheckDevice(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(gpus)));
  EXPECT_EQ(past.code(), absl::StatusCode::kFailedPrecondition);
  if (gpus == 0) {
    EXPECT_THAT(past.message(), HasSubstr("built without CUDA"));
    EXPECT_THAT(past.message(), HasSubstr("--devices cpu"));
  } else {
    EXPECT_THAT(past.message(), HasSubstr(absl::StrCat("this node has ", gpus, " GPU(s)")));
    EXPECT_OK(CheckDevice(c10::Device(c10::kCUDA, 0)));
  }
}

TEST(DeviceTest, ADataParallelJobGetsOneDeviceForAllOrOnePerProcess) {
  ASSERT_OK_AND_ASSIGN(std::vector<c10::Device> one, ParseDevices("cpu"));
  ASSERT_OK_AND_ASSIGN(c10::Device shared, RankDevice(one, 3, 2));
  EXPECT_TRUE(shared.is_cpu());
  ASSERT_OK_AND_ASSIGN(std::vector<c10::Device> two, ParseDevices("cuda:1,cuda:0"));
  ASSERT_OK_AND_ASSIGN(c10::Device first, RankDevice(two, 2, 0));
  ASSERT_OK_AND_ASSIGN(c10::Device second, RankDevice(two, 2, 1));
  EXPECT_EQ(first.index(), 1);
  EXPECT_EQ(second.index(), 0);
  EXPECT_EQ(RankDevice(two, 3, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RankDevice(two, 2, 2).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* bad : {"", ",", "cpu,", "cpu,cuda:0", "cuda:0,cuda:0", "cuda:0;cuda:1", "cuda:0, cuda:1"}) {
    EXPECT_EQ(ParseDevices(bad).status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "'";
  }
  ASSERT_OK_AND_ASSIGN(std::vector<c10::Device> cpus, ParseDevices("cpu,cpu"));  // two processes' CPU slots
  EXPECT_EQ(cpus.size(), 2u);
}

TEST(DeviceTest, AJobReportsTheDeviceItRanOn) {
  v1::JobSpec spec = ::qsearch::testing::TinySpec("mlp", 1);
  spec.mutable_qpl()->set_epochs(0);
  JobOptions options;
  options.device = "cpu";
  ASSERT_OK_AND_ASSIGN(v1::JobResult result, RunSearchJob(spec, options));
  ASSERT_EQ(result.devices_size(), 1);
  EXPECT_EQ(result.devices(0), "cpu");
  EXPECT_GT(result.quantized_accuracy(), 50);
}

TEST(DeviceTest, AJobOnADeviceItCannotUseFailsBeforeLoadingAnything) {
  v1::JobSpec spec = ::qsearch::testing::TinySpec("mlp", 1);
  spec.mutable_dataset()->set_path("/nonexistent/data");  // would be NotFound if it were read
  JobOptions options;
  options.device = "tpu:0";
  EXPECT_EQ(RunSearchJob(spec, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.device = "cpu,cpu";  // two devices for a job of one process
  EXPECT_EQ(RunSearchJob(spec, options).status().code(), absl::StatusCode::kInvalidArgument);
  if (Gpus() == 0) {
    options.device = "cuda:0";
    const auto r = RunSearchJob(spec, options);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(r.status().message(), HasSubstr("cuda:0 cannot be used here"));
  }
}

}  // namespace
}  // namespace qsearch::search
