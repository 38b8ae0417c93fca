// EventHub: versions close the read-then-wait race; waiters run once; a stream that ends
// while waiting takes its waiter back.
#include "server/event_hub.h"

#include <gtest/gtest.h>

namespace qsearch::server {
namespace {

TEST(EventHubTest, WaitersRunOnceAtTheNextNotify) {
  EventHub hub;
  int woken = 0;
  const std::uint64_t seen = hub.Version("jobs/a");
  const std::uint64_t id = hub.Wait("jobs/a", seen, [&] { ++woken; });
  EXPECT_GT(id, 0u);
  EXPECT_EQ(hub.Waiting("jobs/a"), 1u);
  hub.Notify("jobs/b");
  EXPECT_EQ(woken, 0) << "another job's news wakes nobody here";
  hub.Notify("jobs/a");
  EXPECT_EQ(woken, 1);
  EXPECT_EQ(hub.Waiting("jobs/a"), 0u);
  hub.Notify("jobs/a");
  EXPECT_EQ(woken, 1) << "once";
  // The version moved past what the caller saw: nothing registered, look again.
  EXPECT_EQ(hub.Wait("jobs/a", seen, [&] { ++woken; }), 0u);
  EXPECT_EQ(hub.Waiting("jobs/a"), 0u);
}

TEST(EventHubTest, ForgottenWaitersDoNotPileUpOrRun) {
  EventHub hub;
  int woken = 0;
  const std::uint64_t seen = hub.Version("jobs/q");
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 100; ++i) ids.push_back(hub.Wait("jobs/q", seen, [&] { ++woken; }));
  EXPECT_EQ(hub.Waiting("jobs/q"), 100u);
  for (int i = 0; i < 99; ++i) hub.Forget("jobs/q", ids[i]);
  EXPECT_EQ(hub.Waiting("jobs/q"), 1u);
  hub.Notify("jobs/q");
  EXPECT_EQ(woken, 1) << "only the waiter still registered runs";
  hub.Forget("jobs/q", ids[99]);  // already ran: no-op
  EXPECT_EQ(hub.Waiting("jobs/q"), 0u);
}

}  // namespace
}  // namespace qsearch::server
