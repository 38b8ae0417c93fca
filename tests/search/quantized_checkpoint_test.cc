// The quantized checkpoint a job exports: codes and scales that rebuild the weight, and a
// file that puts a fresh zoo model back at the job's accuracy.
#include "search/quantized_checkpoint.h"

#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "search/data.h"
#include "search/job.h"
#include "search/models.h"
#include "search/spec.h"
#include "tests/test_util.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;

TEST(EncodeWeightTest, CodesAndScalesRebuildTheQuantizedWeight) {
  torch::manual_seed(2);
  for (const char* spec : {"uniform:bits=3,granularity=channel", "pot:bits=3,granularity=channel",
                           "esb:bits=4,k=1,granularity=channel", "ternary", "binary"}) {
    auto q = quantizers::MakeQuantizer(spec);
    ASSERT_OK(q);
    const at::Tensor w = torch::randn({8, 4, 3, 3});
    const at::Tensor fq = (*q)->forward(w).detach();
    ASSERT_OK_AND_ASSIGN(EncodedWeight e, EncodeWeight(fq));
    EXPECT_EQ(e.codes.scalar_type(), at::kByte);
    EXPECT_LE(e.levels.size(1), std::int64_t{1} << static_cast<int>((*q)->bits())) << spec;
    EXPECT_TRUE(torch::allclose(DecodeWeight(e), fq, 1e-6, 1e-6)) << spec;
  }
  EXPECT_THAT(EncodeWeight(torch::randn({2, 1000})).status().message(), HasSubstr("distinct values"));
}

v1::JobSpec LenetSpec() {
  v1::JobSpec s = ::qsearch::testing::TinySpec("lenet5");
  s.mutable_dataset()->set_test_size(500);
  s.set_seed(5);
  return s;
}

TEST(QuantizedCheckpointTest, LoadsBackIntoTheModelAndGivesTheReportedAccuracy) {
  const auto dir = std::filesystem::temp_directory_path() / ("qsearch_export_test_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  v1::JobSpec spec = LenetSpec();
  spec.set_exclude_first(true);
  spec.set_model("vgg_small");  // batch norms to fold
  spec.set_fold_batchnorm(true);
  JobOptions options;
  options.out_dir = dir.string();
  ASSERT_OK_AND_ASSIGN(v1::JobResult r, RunSearchJob(spec, options));
  ASSERT_OK_AND_ASSIGN(QuantizedCheckpoint q, ReadQuantizedCheckpoint((dir / "quantized.pt").string()));
  EXPECT_EQ(q.policy.layers_size(), 7);
  EXPECT_TRUE(q.batchnorm_folded);
  EXPECT_DOUBLE_EQ(q.policy.quantized_accuracy(), r.quantized_accuracy());
  EXPECT_EQ(q.layers.count("conv1"), 0u) << "excluded layers stay float, without codes";
  ASSERT_EQ(q.layers.size(), 6u);
  for (const auto& l : q.policy.layers()) {
    if (l.excluded()) continue;
    const EncodedWeight& e = q.layers.at(l.name());
    const at::Tensor w = q.state.at(l.name() + ".weight");
    EXPECT_TRUE(torch::allclose(DecodeWeight(e), w, 1e-6, 1e-6)) << l.name();
    // No output channel uses more values than its bits allow.
    const at::Tensor rows = w.reshape({w.size(0), -1});
    for (std::int64_t c = 0; c < rows.size(0); ++c) {
      EXPECT_LE(std::get<0>(at::_unique(rows[c])).numel(), std::int64_t{1} << static_cast<int>(l.weight_bits()))
          << l.name() << " channel " << c;
    }
  }
  // The state loads into a fresh zoo model and reproduces the job's test accuracy.
  ASSERT_OK_AND_ASSIGN(auto model, BuildModel("vgg_small", {1, 28, 28, 10}));
  model->Profile(torch::zeros({1, 1, 28, 28}));
  ASSERT_OK(LoadQuantizedCheckpoint(*model, q));
  v1::DatasetSpec ds = spec.dataset();
  ds.set_kind("fashion_mnist");
  ASSERT_OK_AND_ASSIGN(DataSplits data, LoadData(ds));
  torch::NoGradGuard ng;
  model->eval();
  const double acc =
      100.0 * model->forward(data.test.images).argmax(1).eq(data.test.labels).sum().item<double>() / data.test.size();
  EXPECT_NEAR(acc, r.quantized_accuracy(), 1e-9);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qsearch::search
