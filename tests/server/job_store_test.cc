// JobStore: idempotent create, tenant isolation, keyset paging, gap-free event sequences,
// durability across reopen, delete.
#include "server/job_store.h"

#include <unistd.h>

#include <filesystem>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qsearch::server {
namespace {

using ::testing::HasSubstr;

std::string FreshDb(const std::string& name) { return ::qsearch::testing::FreshDir(name) + "/jobs.db"; }

v1::JobSpec Spec(const std::string& model) {
  v1::JobSpec s;
  s.set_model(model);
  return s;
}

TEST(JobStoreTest, CreateIsIdempotentPerTenantAndRequestId) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(FreshDb("store_idem")));
  bool created = false;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob a, store->Create("alice", "req-1", Spec("mlp"), &created));
  EXPECT_TRUE(created);
  EXPECT_EQ(a.state(), v1::QUEUED);
  EXPECT_THAT(a.name(), ::testing::StartsWith("jobs/"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob again, store->Create("alice", "req-1", Spec("lenet5"), &created));
  EXPECT_FALSE(created);
  EXPECT_EQ(again.name(), a.name());
  EXPECT_EQ(again.spec().model(), "mlp") << "the first request wins";
  ASSERT_OK_AND_ASSIGN(v1::SearchJob found, store->FindByRequest("alice", "req-1"));
  EXPECT_EQ(found.name(), a.name());
  EXPECT_EQ(store->FindByRequest("bob", "req-1").status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(v1::SearchJob bob, store->Create("bob", "req-1", Spec("mlp"), &created));
  EXPECT_TRUE(created) << "request ids are per tenant";
  EXPECT_NE(bob.name(), a.name());
  ASSERT_OK_AND_ASSIGN(v1::SearchJob c, store->Create("alice", "", Spec("mlp"), &created));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob d, store->Create("alice", "", Spec("mlp"), &created));
  EXPECT_NE(c.name(), d.name()) << "no request id: always a new job";
}

TEST(JobStoreTest, AnotherTenantsJobIsNotFound) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(FreshDb("store_tenant")));
  bool created;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob a, store->Create("alice", "r", Spec("mlp"), &created));
  EXPECT_OK(store->Get("alice", a.name()));
  EXPECT_EQ(store->Get("bob", a.name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Delete("bob", a.name()).code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(JobPage page, store->List("bob", v1::JOB_STATE_UNSPECIFIED, 10, ""));
  EXPECT_TRUE(page.jobs.empty());
}

TEST(JobStoreTest, ListPagesThroughEveryJobOnceNewestFirstAndFiltersByState) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(FreshDb("store_list")));
  bool created;
  std::vector<std::string> names;
  for (int i = 0; i < 23; ++i) {
    ASSERT_OK_AND_ASSIGN(v1::SearchJob j, store->Create("t", "", Spec("mlp"), &created));
    names.push_back(j.name());
  }
  ASSERT_OK(store->Update(names[4], [](v1::SearchJob& j) {
    j.set_state(v1::FAILED);
    return absl::OkStatus();
  }));
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    ASSERT_OK_AND_ASSIGN(JobPage page, store->List("t", v1::JOB_STATE_UNSPECIFIED, 5, token));
    for (const auto& j : page.jobs) seen.push_back(j.name());
    token = page.next_page_token;
    ++pages;
  } while (!token.empty() && pages < 20);
  EXPECT_EQ(pages, 5);
  ASSERT_EQ(seen.size(), 23u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 23u);
  EXPECT_EQ(seen.front(), names.back());
  ASSERT_OK_AND_ASSIGN(JobPage failed, store->List("t", v1::FAILED, 50, ""));
  ASSERT_EQ(failed.jobs.size(), 1u);
  EXPECT_EQ(failed.jobs[0].name(), names[4]);
  EXPECT_THAT(store->List("t", v1::JOB_STATE_UNSPECIFIED, 5, "garbage").status().message(), HasSubstr("page_token"));
}

TEST(JobStoreTest, EventsGetConsecutiveSequencesAndSurviveReopen) {
  const std::string path = FreshDb("store_events");
  std::string name;
  {
    ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(path));
    bool created;
    ASSERT_OK_AND_ASSIGN(v1::SearchJob j, store->Create("t", "x", Spec("mlp"), &created));
    name = j.name();
    for (int i = 0; i < 10; ++i) {
      v1::JobEvent e;
      e.set_epoch(i);
      e.set_sequence(999);  // ignored: the store numbers events
      ASSERT_OK_AND_ASSIGN(v1::JobEvent stored, store->AppendEvent(name, e));
      EXPECT_EQ(stored.sequence(), i + 1);
    }
  }
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(path));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob j, store->Get("t", name));
  EXPECT_EQ(j.last_sequence(), 10);
  EXPECT_EQ(j.last_event().epoch(), 9);
  ASSERT_OK_AND_ASSIGN(auto events, store->EventsAfter(name, 4, 100));
  ASSERT_EQ(events.size(), 6u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), static_cast<std::int64_t>(i) + 5);
  ASSERT_OK(store->Delete("t", name));
  EXPECT_EQ(store->Get("t", name).status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(events, store->EventsAfter(name, 0, 100));
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(store->AppendEvent(name, {}).status().code(), absl::StatusCode::kNotFound);
}

TEST(JobStoreTest, ReplayedWorkerEventsAreDroppedOnce) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(FreshDb("store_replay")));
  bool created;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob j, store->Create("t", "", Spec("mlp"), &created));
  ASSERT_OK(store->AppendEvent(j.name(), {}));  // the server's own "queued"
  for (int w : {1, 2, 3}) ASSERT_OK(store->AppendEvent(j.name(), {}, w));
  // A resumed worker starts again after its checkpoint (worker sequence 2).
  EXPECT_EQ(store->AppendEvent(j.name(), {}, 3).status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_OK_AND_ASSIGN(v1::JobEvent e, store->AppendEvent(j.name(), {}, 4));
  EXPECT_EQ(e.sequence(), 5);
  ASSERT_OK_AND_ASSIGN(auto events, store->EventsAfter(j.name(), 0, 100));
  EXPECT_EQ(events.size(), 5u);
}

TEST(JobStoreTest, InStateAndCounts) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(FreshDb("store_state")));
  bool created;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob a, store->Create("t", "", Spec("mlp"), &created));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob b, store->Create("u", "", Spec("mlp"), &created));
  ASSERT_OK(store->Update(a.name(), [](v1::SearchJob& j) {
    j.set_state(v1::RUNNING);
    return absl::OkStatus();
  }));
  ASSERT_OK_AND_ASSIGN(auto running, store->InState(v1::RUNNING));
  ASSERT_EQ(running.size(), 1u);
  EXPECT_EQ(running[0].name(), a.name());
  ASSERT_OK_AND_ASSIGN(int queued, store->CountInState("u", v1::QUEUED));
  EXPECT_EQ(queued, 1);
  EXPECT_EQ(store->TenantOf(b.name()).value(), "u");
}

TEST(JobStoreTest, UnwritableLocationIsAClearError) {
  auto s = JobStore::Open("/nonexistent-dir/jobs.db");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr("cannot open job store"));
}

}  // namespace
}  // namespace qsearch::server
