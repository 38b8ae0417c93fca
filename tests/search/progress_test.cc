// Event numbering: consecutive numbers, none for what only a resumed run says, ETA from
// the steps done.
#include "search/progress.h"

#include <gtest/gtest.h>

namespace qsearch::search {
namespace {

TEST(ProgressTest, NumbersEventsAndLeavesResumptionNotesUnnumbered) {
  std::vector<v1::JobEvent> got;
  Progress p([&](const v1::JobEvent& e) { got.push_back(e); });
  p.Emit({v1::PHASE_LOADING, 0, 0, 0, "loading"});
  p.steps_done = 10;
  p.steps_total = 40;
  p.Unnumbered();
  p.Emit({v1::PHASE_PRETRAIN, 1, 0, 0, "resumed"});
  p.Emit({v1::PHASE_PRETRAIN, 1, 0.5, 80, "epoch done", nullptr, /*epoch_end=*/true});
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].sequence(), 1);
  EXPECT_EQ(got[1].sequence(), 0);
  EXPECT_EQ(got[2].sequence(), 2);
  EXPECT_EQ(p.sequence, 2);
  EXPECT_EQ(got[2].step(), 10);
  EXPECT_TRUE(got[2].epoch_end());
  EXPECT_NEAR(got[2].eta_seconds(), got[2].elapsed_seconds() * 3, 1e-9);  // 30 of 40 steps left
  p.SetElapsedSeconds(100);
  EXPECT_GE(p.ElapsedSeconds(), 100);
  Progress silent(nullptr);
  silent.Emit({v1::PHASE_LOADING});
  EXPECT_EQ(silent.sequence, 1);
}

}  // namespace
}  // namespace qsearch::search
