// ComputeRowStats against ATen in double precision, and when SharedRowStats shares.
#include "quantizers/row_stats.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantizers/quantizer.h"

namespace qsearch::quantizers {
namespace {

TEST(RowStatsTest, MatchesATenInDouble) {
  at::manual_seed(11);
  // Row lengths around the lane width, and a mean far from zero against the spread.
  for (const std::int64_t seg : {1, 7, 8, 9, 150, 400}) {
    const at::Tensor x = at::randn({5, seg}) * 0.01 + at::arange(5).unsqueeze(1) - 2.0;
    const RowStats s = ComputeRowStats(x, seg);
    const at::Tensor d = x.to(at::kDouble);
    const std::vector<std::pair<const std::vector<double>*, at::Tensor>> expected = {
        {&s.min, d.amin(1)},
        {&s.max, d.amax(1)},
        {&s.abs_max, d.abs().amax(1)},
        {&s.abs_mean, d.abs().mean(1)},
        {&s.mean, d.mean(1)},
        {&s.std, d.std(1, /*unbiased=*/false)}};
    ASSERT_EQ(s.rows(), 5);
    for (const auto& [got, want] : expected) {
      for (std::int64_t r = 0; r < 5; ++r) {
        EXPECT_NEAR((*got)[r], want[r].item<double>(), 1e-12 + 1e-9 * std::fabs(want[r].item<double>()))
            << "segment " << seg << " row " << r;
      }
    }
  }
}

TEST(RowStatsTest, SharedOnlyInsideAScopeAndForTheSameTensor) {
  at::Tensor w = at::ones({2, 4});
  {
    RowStatsScope scope;
    EXPECT_EQ(SharedRowStats(w, 4).max[0], 1.0);
    EXPECT_EQ(&SharedRowStats(w, 4), &SharedRowStats(w, 4));
    EXPECT_EQ(SharedRowStats(w, 8).rows(), 1);  // another segment size is recomputed
    const at::Tensor other = at::full({2, 4}, 3.0);
    EXPECT_EQ(SharedRowStats(other, 4).max[0], 3.0);  // another tensor too
  }
  w.mul_(5);  // outside a scope every call sees the tensor as it is now
  EXPECT_EQ(SharedRowStats(w, 4).max[0], 5.0);
  RowStatsScope scope;
  EXPECT_EQ(SharedRowStats(w, 4).max[1], 5.0);
}

// A mixture's candidates built from shared statistics quantize exactly as each does alone.
TEST(RowStatsTest, CandidatesGiveTheSameFormsInsideAScope) {
  at::manual_seed(5);
  const at::Tensor w = at::randn({16, 6, 5, 5});
  for (const char* spec : {"uniform:bits=3,granularity=channel", "esb:bits=4,k=1,granularity=channel",
                           "pot:bits=3,granularity=channel", "ul2q:bits=2,granularity=channel",
                           "dorefa:bits=3,granularity=channel", "binary:granularity=channel"}) {
    auto q = MakeQuantizer(spec);
    ASSERT_TRUE(q.ok()) << q.status();
    const at::Tensor alone = (*q)->Prepare(w).table;
    RowStatsScope scope;
    SharedRowStats(w, 150);  // filled by an earlier candidate
    EXPECT_TRUE(at::equal((*q)->Prepare(w).table, alone)) << spec;
  }
}

}  // namespace
}  // namespace qsearch::quantizers
