// JobStore on both implementations (embedded SQLite and a real PostgreSQL 15 started for
// the test): idempotent create, tenant isolation, keyset paging, gap-free event sequences,
// durability across reopen, delete; on PostgreSQL also two replicas on one database, the
// schema version check, leases with fencing, and blobs.
#include "server/job_store.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "tests/testing/postgres.h"

namespace qsearch::server {
namespace {

using ::testing::HasSubstr;

std::string FreshDb(const std::string& name) { return ::qsearch::testing::FreshDir(name) + "/jobs.db"; }

// One PostgreSQL cluster for the whole test binary, started on first use.
::qsearch::testing::TestPostgres* SharedPostgres() {
  static auto* pg = [] {
    auto started = ::qsearch::testing::TestPostgres::Start(::qsearch::testing::FreshDir("store_pg"));
    if (!started.ok()) {
      ADD_FAILURE() << started.status();
      return static_cast<::qsearch::testing::TestPostgres*>(nullptr);
    }
    return started->release();
  }();
  return pg;
}

// Stops the shared cluster when the tests end.
class PostgresEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { delete SharedPostgres(); }
};
const auto* const kPostgresEnvironment = ::testing::AddGlobalTestEnvironment(new PostgresEnvironment);

// The same cases on each implementation: GetParam() is "sqlite" or "postgres".
class JobStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  // Where a fresh, empty store named `name` lives.
  std::string Where(const std::string& name) {
    if (GetParam() == "sqlite") return FreshDb(name);
    auto* pg = SharedPostgres();
    if (pg == nullptr) return "postgresql://127.0.0.1:1/unavailable";
    auto uri = pg->NewDatabase(name);
    EXPECT_TRUE(uri.ok()) << uri.status();
    return uri.ok() ? *uri : "";
  }
};
INSTANTIATE_TEST_SUITE_P(Backends, JobStoreTest, ::testing::Values("sqlite", "postgres"),
                         [](const auto& info) { return info.param; });

v1::JobSpec Spec(const std::string& model) {
  v1::JobSpec s;
  s.set_model(model);
  return s;
}

TEST_P(JobStoreTest, CreateIsIdempotentPerTenantAndRequestId) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(Where("store_idem")));
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

TEST_P(JobStoreTest, AnotherTenantsJobIsNotFound) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(Where("store_tenant")));
  bool created;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob a, store->Create("alice", "r", Spec("mlp"), &created));
  EXPECT_OK(store->Get("alice", a.name()));
  EXPECT_EQ(store->Get("bob", a.name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Delete("bob", a.name()).code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(JobPage page, store->List("bob", v1::JOB_STATE_UNSPECIFIED, 10, ""));
  EXPECT_TRUE(page.jobs.empty());
}

TEST_P(JobStoreTest, ListPagesThroughEveryJobOnceNewestFirstAndFiltersByState) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(Where("store_list")));
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

TEST_P(JobStoreTest, EventsGetConsecutiveSequencesAndSurviveReopen) {
  const std::string path = Where("store_events");
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

TEST_P(JobStoreTest, ReplayedWorkerEventsAreDroppedOnce) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(Where("store_replay")));
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

TEST_P(JobStoreTest, InStateAndCounts) {
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(Where("store_state")));
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

TEST(JobStoreOpenTest, UnwritableLocationIsAClearError) {
  auto s = JobStore::Open("/nonexistent-dir/jobs.db");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr("cannot open job store"));
}

TEST(PostgresJobStoreTest, TwoReplicasOnOneDatabaseShareJobsAndSequences) {
  auto* pg = SharedPostgres();
  ASSERT_NE(pg, nullptr);
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("store_replicas"));
  ASSERT_OK_AND_ASSIGN(auto a, JobStore::Open(uri));
  ASSERT_OK_AND_ASSIGN(auto b, JobStore::Open(uri));
  // Eight clients retrying one request at once, half on each replica: one job.
  std::vector<std::string> names(8);
  std::vector<int> created(8, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      bool c = false;
      auto job = (i % 2 ? a : b)->Create("alice", "same-request", Spec("mlp"), &c);
      if (job.ok()) names[i] = job->name();
      created[i] = c;
    });
  }
  for (auto& t : threads) t.join();
  threads.clear();
  EXPECT_EQ(std::count(created.begin(), created.end(), 1), 1);
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), 1u);
  ASSERT_FALSE(names[0].empty());
  ASSERT_OK_AND_ASSIGN(v1::SearchJob seen, a->Get("alice", names[0]));
  EXPECT_EQ(seen.request_id(), "same-request");
  // Both replicas append to one job at once: the sequence has no gap and no duplicate.
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      for (int i = 0; i < 20; ++i) ASSERT_OK((r ? a : b)->AppendEvent(names[0], {}));
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_OK_AND_ASSIGN(auto events, b->EventsAfter(names[0], 0, 100));
  ASSERT_EQ(events.size(), 40u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), static_cast<std::int64_t>(i) + 1);
  ASSERT_OK_AND_ASSIGN(seen, b->Get("alice", names[0]));
  EXPECT_EQ(seen.last_sequence(), 40);
}

TEST(PostgresJobStoreTest, ADatabaseFromANewerServerIsRefused) {
  auto* pg = SharedPostgres();
  ASSERT_NE(pg, nullptr);
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("store_schema"));
  { ASSERT_OK(JobStore::Open(uri)); }
  { ASSERT_OK(JobStore::Open(uri)) << "reopening an up-to-date database migrates nothing"; }
  ASSERT_OK(pg->Exec("store_schema", "INSERT INTO qsearch_schema(version) VALUES(99)"));
  auto s = JobStore::Open(uri);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("schema version 99"));
}

TEST(PostgresJobStoreTest, UnreachableServerIsUnavailableWithoutThePassword) {
  auto s = JobStore::Open("postgresql://qsearch:hunter2@127.0.0.1:1/jobs?connect_timeout=5");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr("cannot open job store postgresql://qsearch:***@127.0.0.1:1/jobs"));
  EXPECT_THAT(s.status().message(), ::testing::Not(HasSubstr("hunter2")));
}

TEST(PostgresJobStoreTest, TextPostgresCannotHoldIsInvalidArgumentAndTheStoreGoesOn) {
  auto* pg = SharedPostgres();
  ASSERT_NE(pg, nullptr);
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("store_nul"));
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(uri));
  bool created;
  auto s = store->Create("t", std::string("re\0q", 4), Spec("mlp"), &created);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  EXPECT_OK(store->Create("t", "fine", Spec("mlp"), &created));
}

TEST(PostgresJobStoreTest, ClaimsNeverShareAJobAndAStaleFenceCannotWrite) {
  auto* pg = SharedPostgres();
  ASSERT_NE(pg, nullptr);
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("store_leases"));
  ASSERT_OK_AND_ASSIGN(auto a, JobStore::Open(uri));
  ASSERT_OK_AND_ASSIGN(auto b, JobStore::Open(uri));
  bool created;
  std::vector<std::string> queued;
  for (int i = 0; i < 12; ++i) {
    ASSERT_OK_AND_ASSIGN(v1::SearchJob j, a->Create("t", "", Spec("mlp"), &created));
    queued.push_back(j.name());
  }
  // Two nodes claiming as fast as they can: every job once, oldest first per node.
  std::vector<std::string> got[2];
  std::vector<std::thread> threads;
  for (int n = 0; n < 2; ++n) {
    threads.emplace_back([&, n] {
      while (true) {
        auto j = (n ? b : a)->Claim(n ? "node-b" : "node-a", 30);
        if (!j.ok()) break;
        EXPECT_EQ(j->state(), v1::RUNNING);
        EXPECT_EQ(j->attempts(), 1);
        got[n].push_back(j->name());
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> all(got[0].begin(), got[0].end());
  all.insert(got[1].begin(), got[1].end());
  EXPECT_EQ(all.size(), queued.size());
  EXPECT_EQ(got[0].size() + got[1].size(), queued.size()) << "no job claimed twice";
  EXPECT_EQ(a->Claim("node-a", 30).status().code(), absl::StatusCode::kNotFound) << "live leases are not claimable";

  // A lease that lapses (its node died) is claimed again with the next fence; the old
  // holder's renewal, events and blobs are refused from then on.
  const std::string name = queued[0];
  ASSERT_OK_AND_ASSIGN(auto holder, a->LeaseHolder(name));
  EXPECT_TRUE(holder.second);
  ASSERT_OK(pg->Exec("store_leases", "UPDATE jobs SET lease_until_us = 0 WHERE name = '" + name + "'"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob again, b->Claim("node-c", 30));
  EXPECT_EQ(again.name(), name) << "a lapsed lease goes before the queue";
  EXPECT_EQ(again.attempts(), 2);
  ASSERT_OK_AND_ASSIGN(holder, a->LeaseHolder(name));
  EXPECT_EQ(holder.first, "node-c");
  EXPECT_TRUE(holder.second);
  EXPECT_EQ(a->Renew(name, 1, 30).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(a->AppendEvent(name, {}, 0, /*fence=*/1).status().code(), absl::StatusCode::kAborted);
  const std::string file = ::qsearch::testing::FreshDir("store_blob_fence") + "/f";
  std::ofstream(file) << "stale";
  EXPECT_EQ(a->PutBlob(name + "/checkpoint.pt", file, name, 1).code(), absl::StatusCode::kAborted);
  EXPECT_OK(b->Renew(name, 2, 30));
  EXPECT_OK(b->AppendEvent(name, {}, 0, 2));
  EXPECT_OK(b->PutBlob(name + "/checkpoint.pt", file, name, 2));
  // Cancelled through a server: the holder's renewal says so, its events are refused.
  ASSERT_OK(a->Update(name, [](v1::SearchJob& j) {
    j.set_state(v1::CANCELLED);
    return absl::OkStatus();
  }));
  EXPECT_EQ(b->Renew(name, 2, 30).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b->AppendEvent(name, {}, 0, 2).status().code(), absl::StatusCode::kAborted);
  // A released lease is claimable at once.
  ASSERT_OK(a->Release(queued[1], 1));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob released, b->Claim("node-d", 30));
  EXPECT_EQ(released.name(), queued[1]);
  EXPECT_EQ(released.attempts(), 2);
}

TEST(PostgresJobStoreTest, BlobsRoundTripAcrossReplicasAndDeleteByPrefix) {
  auto* pg = SharedPostgres();
  ASSERT_NE(pg, nullptr);
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("store_blobs"));
  ASSERT_OK_AND_ASSIGN(auto a, JobStore::Open(uri));
  ASSERT_OK_AND_ASSIGN(auto b, JobStore::Open(uri));
  const std::string dir = ::qsearch::testing::FreshDir("store_blobs");
  // 2.5 chunks of bytes 0..255, and an empty file.
  std::string bytes((std::size_t{5} << 20) / 2, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 % 251);
  std::ofstream(dir + "/big", std::ios::binary) << bytes;
  std::ofstream(dir + "/empty", std::ios::binary).close();
  ASSERT_OK(a->PutBlob("jobs/x/big", dir + "/big"));
  ASSERT_OK(a->PutBlob("jobs/x/empty", dir + "/empty"));
  ASSERT_OK(a->PutBlob("jobs/y/big", dir + "/big"));
  ASSERT_OK(b->FetchBlob("jobs/x/big", dir + "/big.back"));
  EXPECT_EQ(::qsearch::testing::ReadAll(dir + "/big.back"), bytes);
  ASSERT_OK(b->FetchBlob("jobs/x/empty", dir + "/empty.back"));
  EXPECT_EQ(std::filesystem::file_size(dir + "/empty.back"), 0u);
  // Replacing keeps one version; a damaged one is DataLoss and leaves no file.
  std::ofstream(dir + "/small", std::ios::binary) << "small";
  ASSERT_OK(a->PutBlob("jobs/x/big", dir + "/small"));
  ASSERT_OK(b->FetchBlob("jobs/x/big", dir + "/big.back"));
  EXPECT_EQ(::qsearch::testing::ReadAll(dir + "/big.back"), "small");
  ASSERT_OK(pg->Exec("store_blobs", "UPDATE blob_chunks SET data = 'x' WHERE key = 'jobs/y/big' AND chunk = 1"));
  EXPECT_EQ(b->FetchBlob("jobs/y/big", dir + "/damaged").code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(std::filesystem::exists(dir + "/damaged"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/damaged.fetch"));
  // "jobs/x/" goes, "jobs/y/" stays; a % in a prefix is no pattern.
  ASSERT_OK(a->DeleteBlobs("jobs/%"));
  ASSERT_OK(b->FetchBlob("jobs/x/empty", dir + "/still"));
  ASSERT_OK(a->DeleteBlobs("jobs/x/"));
  EXPECT_EQ(b->FetchBlob("jobs/x/big", dir + "/gone").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b->FetchBlob("jobs/y/big", dir + "/damaged").code(), absl::StatusCode::kDataLoss) << "still there";
  // SQLite keeps none: the server's own directory holds its files.
  ASSERT_OK_AND_ASSIGN(auto lite, JobStore::Open(FreshDb("store_blobs_lite")));
  EXPECT_FALSE(lite->Shared());
  EXPECT_EQ(lite->Claim("x", 1).status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace qsearch::server
