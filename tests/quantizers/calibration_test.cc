// Offline EMA and KL calibration of activation ranges.
#include "quantizers/calibration.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qsearch::quantizers {
namespace {

TEST(CalibrationTest, EmaFollowsBatchRangesByHand) {
  RangeCalibrator c({CalibrationMethod::kEma, 8, /*is_signed=*/false, /*momentum=*/0.5});
  ASSERT_OK(c.Observe(at::tensor({0.0f, 2.0f})));
  ASSERT_OK(c.Observe(at::tensor({1.0f, 4.0f})));
  auto r = c.Range();
  ASSERT_OK(r);
  EXPECT_DOUBLE_EQ(r->first, 0.0);
  EXPECT_DOUBLE_EQ(r->second, 3.0);

  RangeCalibrator s({CalibrationMethod::kEma, 8, /*is_signed=*/true, 0.5});
  ASSERT_OK(s.Observe(at::tensor({-5.0f, 1.0f})));
  auto rs = s.Range();
  EXPECT_DOUBLE_EQ(rs->first, -5.0);
  EXPECT_DOUBLE_EQ(rs->second, 5.0);
}

TEST(CalibrationTest, KlClipsRareOutliers) {
  at::manual_seed(9);
  RangeCalibrator c({CalibrationMethod::kKl, 4, /*is_signed=*/false});
  for (int i = 0; i < 4; ++i) {
    at::Tensor x = at::relu(at::randn({50000}));
    x[0] = 40.0f;  // one outlier per batch
    ASSERT_OK(c.Observe(x));
  }
  auto r = c.Range();
  ASSERT_OK(r);
  EXPECT_GT(r->second, 1.5);   // keeps the bulk of a half-normal
  EXPECT_LT(r->second, 10.0);  // but not the outlier at 40
  // A wider range appears later: the histogram rebins without losing the earlier mass.
  ASSERT_OK(c.Observe(at::relu(at::randn({50000})) * 100));
  EXPECT_OK(c.Range());
}

TEST(CalibrationTest, AppliedRangeFreezesUniformAct) {
  auto q = MakeQuantizer("uniform_act:bits=4");
  ASSERT_OK(q);
  ASSERT_OK(ApplyRange(**q, 0.0, 3.0));
  (*q)->train();
  at::Tensor y = (*q)->forward(at::tensor({10.0f, 1.0f}));
  EXPECT_NEAR(y[0].item<float>(), 3.0f, 1e-6);  // clipped at the calibrated range
  auto range = CurrentRange(**q);
  ASSERT_OK(range);
  EXPECT_DOUBLE_EQ(*range, 3.0);  // training did not move it
}

TEST(CalibrationTest, BadInputsGiveClearErrors) {
  RangeCalibrator c({});
  EXPECT_EQ(c.Range().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.Observe(at::tensor({1.0f, NAN})).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Observe(at::zeros({0})).code(), absl::StatusCode::kInvalidArgument);
  auto pact = MakeQuantizer("pact:bits=4");
  ASSERT_OK(pact);
  EXPECT_EQ(ApplyRange(**pact, 0, 1).code(), absl::StatusCode::kInvalidArgument);
  auto act = MakeQuantizer("uniform_act:bits=4");
  EXPECT_EQ(ApplyRange(**act, 0, NAN).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qsearch::quantizers
