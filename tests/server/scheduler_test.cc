// The scheduler's state machine against a fake worker (server/testing/fake_worker.cc):
// QUEUED -> RUNNING -> SUCCEEDED / FAILED (with the worker's canonical code) / CANCELLED,
// crashes and malformed channels, the concurrency limit, and a shutdown that leaves jobs
// RUNNING for the next start to resume; on PostgreSQL, leases: a lost lease or a cancel
// through another server stops the worker with no further write from this node.
#include "server/scheduler.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "tests/testing/postgres.h"

namespace qsearch::server {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::qsearch::testing::FreshDir(std::string("qsearch_scheduler_") +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    store_ = JobStore::Open(dir_ + "/jobs.db").value();
  }
  void TearDown() override {
    scheduler_.reset();
    fs::remove_all(dir_);
  }

  void StartScheduler(int workers = 1, double grace = 3, std::vector<std::string> devices = {"cpu"}) {
    SchedulerOptions o;
    o.devices = std::move(devices);
    o.worker_binary = QSEARCH_FAKE_WORKER_BIN;
    o.data_dir = dir_;
    o.workers = workers;
    o.threads_per_worker = 3;
    o.cancel_grace_seconds = grace;
    scheduler_ = std::make_unique<Scheduler>(store_.get(), &hub_, o);
    ASSERT_OK(scheduler_->Start());
  }

  // A job whose fake worker acts out `act`.
  std::string Submit(const std::string& act, int world_size = 1) {
    v1::JobSpec spec;
    spec.set_model(act);
    spec.set_world_size(world_size);
    bool created = false;
    const std::string name = store_->Create("t", "", spec, &created).value().name();
    scheduler_->Wake();
    return name;
  }

  // Polls the store (bounded) until `done` holds for the job.
  v1::SearchJob WaitFor(const std::string& name, const std::function<bool(const v1::SearchJob&)>& done,
                        double seconds = 20) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    v1::SearchJob job;
    while (std::chrono::steady_clock::now() < deadline) {
      job = store_->Get("t", name).value();
      if (done(job)) return job;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << name << " is still " << v1::JobState_Name(job.state());
    return job;
  }
  v1::SearchJob WaitTerminal(const std::string& name) {
    return WaitFor(name, [](const v1::SearchJob& j) { return IsTerminalState(j.state()); });
  }
  static bool IsTerminalState(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }
  // Waits until the worker's first event is stored: it is running.
  void WaitStarted(const std::string& name) {
    WaitFor(name, [](const v1::SearchJob& j) { return j.last_sequence() >= 1 && j.state() == v1::RUNNING; });
  }

  // The --device the job's worker was started with.
  std::string DeviceOf(const std::string& name) {
    std::ifstream argv(scheduler_->JobDir(name) + "/argv.log");
    std::string line;
    std::getline(argv, line);
    const size_t at = line.find("--device ");
    if (at == std::string::npos) return "";
    const size_t from = at + 9;
    return line.substr(from, line.find(' ', from) - from);
  }

  std::string dir_;
  std::unique_ptr<JobStore> store_;
  EventHub hub_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, ASuccessfulWorkerStoresItsEventsResultAndArtifacts) {
  StartScheduler();
  const std::string name = Submit("ok");
  const v1::SearchJob job = WaitTerminal(name);
  EXPECT_EQ(job.state(), v1::SUCCEEDED);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_EQ(job.result().policy().model(), "ok");  // from the channel, not a file
  EXPECT_EQ(job.result().quantized_accuracy(), 42.5);
  ASSERT_EQ(job.artifacts_size(), 1);
  EXPECT_EQ(job.artifacts(0).kind(), "policy");
  EXPECT_EQ(job.artifacts(0).size(), 16);
  EXPECT_EQ(job.artifacts(0).sha256().size(), 64u);
  auto events = store_->EventsAfter(name, 0, 100).value();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].message(), "step 3");
  // Execution settings travel beside the spec.
  std::ifstream argv(scheduler_->JobDir(name) + "/argv.log");
  std::string line;
  std::getline(argv, line);
  EXPECT_THAT(line, HasSubstr("--threads 3"));
  EXPECT_THAT(line, HasSubstr("--resume"));
  EXPECT_THAT(line, HasSubstr("--channel-fd 3"));
}

TEST_F(SchedulerTest, AFailureKeepsTheWorkersCanonicalCode) {
  StartScheduler();
  const v1::SearchJob job = WaitTerminal(Submit("fail"));
  EXPECT_EQ(job.state(), v1::FAILED);
  EXPECT_EQ(job.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(job.error_message(), "bad archive: label 7 out of range");
  auto events = store_->EventsAfter(job.name(), 0, 100).value();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().message(), "failed: bad archive: label 7 out of range");
}

TEST_F(SchedulerTest, CrashesSilenceAndGarbageFailAsInternalOrTheReadersCode) {
  StartScheduler(/*workers=*/3);
  const std::string crash = Submit("crash"), silent = Submit("silent"), garbage = Submit("garbage");
  v1::SearchJob job = WaitTerminal(crash);
  EXPECT_EQ(job.state(), v1::FAILED);
  EXPECT_EQ(job.error_code(), static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_THAT(job.error_message(), HasSubstr("crashed (signal 6"));
  job = WaitTerminal(silent);
  EXPECT_EQ(job.error_code(), static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_THAT(job.error_message(), HasSubstr("without reporting a result"));
  job = WaitTerminal(garbage);
  EXPECT_EQ(job.state(), v1::FAILED);
  EXPECT_EQ(job.error_code(), static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(job.error_message(), HasSubstr("the worker's channel"));
}

TEST_F(SchedulerTest, CancelStopsTheWorkerAndAStubbornOneIsKilled) {
  StartScheduler(/*workers=*/2, /*grace=*/0.5);
  const std::string polite = Submit("hang"), stubborn = Submit("stubborn");
  WaitStarted(polite);
  WaitStarted(stubborn);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_OK(scheduler_->Cancel(polite));
  ASSERT_OK(scheduler_->Cancel(stubborn));
  EXPECT_EQ(WaitTerminal(polite).state(), v1::CANCELLED);
  EXPECT_EQ(WaitTerminal(stubborn).state(), v1::CANCELLED);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10);
  // A queued job is cancelled at once; a finished one is returned as it is.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob done, scheduler_->Cancel(polite));
  EXPECT_EQ(done.state(), v1::CANCELLED);
}

TEST_F(SchedulerTest, RunsAtMostItsWorkersAtOnce) {
  StartScheduler(/*workers=*/1);
  const std::string first = Submit("hang"), second = Submit("ok");
  WaitStarted(first);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(store_->Get("t", second).value().state(), v1::QUEUED);
  EXPECT_EQ(scheduler_->running(), 1);
  ASSERT_OK(scheduler_->Cancel(first));
  EXPECT_EQ(WaitTerminal(second).state(), v1::SUCCEEDED);
}

TEST_F(SchedulerTest, AGpuRunsOneJobAtATimeAndADataParallelJobTakesOnePerProcess) {
  StartScheduler(/*workers=*/3, /*grace=*/3, {"cuda:0", "cuda:1"});
  const std::string a = Submit("hang"), b = Submit("hang");
  WaitStarted(a);
  WaitStarted(b);
  EXPECT_EQ(DeviceOf(a), "cuda:0");
  EXPECT_EQ(DeviceOf(b), "cuda:1");
  // A third worker slot is free, but no GPU: the job waits.
  const std::string c = Submit("ok");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(store_->Get("t", c).value().state(), v1::QUEUED);
  EXPECT_EQ(scheduler_->running(), 2);
  ASSERT_OK(scheduler_->Cancel(a));
  EXPECT_EQ(WaitTerminal(c).state(), v1::SUCCEEDED);
  EXPECT_EQ(DeviceOf(c), "cuda:0");  // a's, freed
  // Two processes while one GPU is free: they share it rather than wait.
  const std::string d = Submit("hang", /*world_size=*/2);
  WaitStarted(d);
  EXPECT_EQ(DeviceOf(d), "cuda:0");
  ASSERT_OK(scheduler_->Cancel(b));
  ASSERT_OK(scheduler_->Cancel(d));
  EXPECT_EQ(WaitTerminal(b).state(), v1::CANCELLED);
  EXPECT_EQ(WaitTerminal(d).state(), v1::CANCELLED);
  // Both free: one GPU per process.
  const std::string e = Submit("hang", /*world_size=*/2);
  WaitStarted(e);
  EXPECT_THAT(DeviceOf(e), ::testing::AnyOf("cuda:0,cuda:1", "cuda:1,cuda:0"));
  const std::string f = Submit("ok");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(store_->Get("t", f).value().state(), v1::QUEUED);  // e holds both
  ASSERT_OK(scheduler_->Cancel(e));
  EXPECT_EQ(WaitTerminal(f).state(), v1::SUCCEEDED);
}

TEST_F(SchedulerTest, ACpuEntryRunsAsManyJobsAsWorkersAndAGpuListedTwiceRunsTwo) {
  StartScheduler(/*workers=*/2, /*grace=*/3, {"cpu"});
  const std::string a = Submit("hang"), b = Submit("hang", /*world_size=*/2);
  WaitStarted(a);
  WaitStarted(b);
  EXPECT_EQ(DeviceOf(a), "cpu");
  EXPECT_EQ(DeviceOf(b), "cpu");  // its processes share the CPU (and the job's threads)
  ASSERT_OK(scheduler_->Cancel(a));
  ASSERT_OK(scheduler_->Cancel(b));
  WaitTerminal(a);
  WaitTerminal(b);
  scheduler_.reset();
  StartScheduler(/*workers=*/2, /*grace=*/3, {"cuda:0", "cuda:0"});
  const std::string c = Submit("hang"), d = Submit("hang", /*world_size=*/2);
  WaitStarted(c);
  WaitStarted(d);
  EXPECT_EQ(DeviceOf(c), "cuda:0");
  EXPECT_EQ(DeviceOf(d), "cuda:0");  // one GPU, named twice: not two GPUs for its processes
  ASSERT_OK(scheduler_->Cancel(c));
  ASSERT_OK(scheduler_->Cancel(d));
  WaitTerminal(c);
  WaitTerminal(d);
}

TEST_F(SchedulerTest, ShutdownLeavesJobsRunningForTheNextStartToResume) {
  StartScheduler();
  const std::string name = Submit("hang");
  WaitStarted(name);
  scheduler_->Shutdown();
  EXPECT_EQ(store_->Get("t", name).value().state(), v1::RUNNING);
  StartScheduler();  // a restarted server
  const v1::SearchJob again = WaitFor(name, [](const v1::SearchJob& j) { return j.attempts() == 2; });
  EXPECT_EQ(again.state(), v1::RUNNING);
  ASSERT_OK(scheduler_->Cancel(name));
  EXPECT_EQ(WaitTerminal(name).state(), v1::CANCELLED);
}

TEST(LeasedSchedulerTest, ALostLeaseOrACancelElsewhereStopsTheWorkerWithNoFurtherWrite) {
  const std::string dir = ::qsearch::testing::FreshDir("qsearch_scheduler_leases");
  ASSERT_OK_AND_ASSIGN(auto pg, ::qsearch::testing::TestPostgres::Start(::qsearch::testing::FreshDir("qsearch_scheduler_leases_pg")));
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("leases"));
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(uri));
  ASSERT_OK_AND_ASSIGN(auto other, JobStore::Open(uri));  // another server's view
  EventHub hub;
  SchedulerOptions o;
  o.worker_binary = QSEARCH_FAKE_WORKER_BIN;
  o.data_dir = dir + "/node";
  o.workers = 2;
  o.agent = "node-one";
  o.lease_seconds = 1;
  Scheduler scheduler(store.get(), &hub, o);
  ASSERT_OK(scheduler.Start());
  v1::JobSpec hang;
  hang.set_model("hang");
  bool created;
  auto wait = [&](const std::string& name, const std::function<bool(const v1::SearchJob&)>& done) {
    v1::SearchJob job;
    for (int i = 0; i < 500; ++i) {
      job = other->Get("t", name).value();
      if (done(job)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return job;
  };
  auto wait_idle = [&] {
    for (int i = 0; i < 500 && scheduler.running() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return scheduler.running();
  };
  auto started = [](const v1::SearchJob& j) { return j.state() == v1::RUNNING && j.last_sequence() >= 1; };

  // The lease lapses (say this node was cut off) and another node claims the job.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob stolen, other->Create("t", "", hang, &created));
  EXPECT_TRUE(started(wait(stolen.name(), started)));
  ASSERT_OK_AND_ASSIGN(auto holder, other->LeaseHolder(stolen.name()));
  EXPECT_EQ(holder, std::make_pair(std::string("node-one"), true));
  ASSERT_OK(pg->Exec("leases", "UPDATE jobs SET lease_until_us = 0 WHERE name = '" + stolen.name() + "'"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob claimed, other->Claim("node-two", 60));
  ASSERT_EQ(claimed.name(), stolen.name());
  EXPECT_EQ(wait_idle(), 0) << "this node stopped its worker";
  ASSERT_OK_AND_ASSIGN(v1::SearchJob after, other->Get("t", stolen.name()));
  EXPECT_EQ(after.state(), v1::RUNNING) << "the lost run wrote no end";
  EXPECT_EQ(after.attempts(), 2);
  EXPECT_EQ(after.last_sequence(), 1);
  EXPECT_OK(other->AppendEvent(stolen.name(), {}, 0, /*fence=*/2)) << "the new holder writes on";

  // Cancelled through another server: the worker here stops; the job keeps that end and
  // its one DONE event.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob cancelled, other->Create("t", "", hang, &created));
  EXPECT_TRUE(started(wait(cancelled.name(), started)));
  ASSERT_OK(other->Update(cancelled.name(), [](v1::SearchJob& j) {
    j.set_state(v1::CANCELLED);
    return absl::OkStatus();
  }));
  v1::JobEvent done;
  done.set_phase(v1::PHASE_DONE);
  ASSERT_OK(other->AppendEvent(cancelled.name(), done));
  EXPECT_EQ(wait_idle(), 0);
  ASSERT_OK_AND_ASSIGN(auto events, other->EventsAfter(cancelled.name(), 0, 100));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events.back().phase(), v1::PHASE_DONE);
  ASSERT_OK_AND_ASSIGN(after, other->Get("t", cancelled.name()));
  EXPECT_EQ(after.state(), v1::CANCELLED);
  scheduler.Shutdown();
}

}  // namespace
}  // namespace qsearch::server
