// Dispatching queued jobs to worker processes (worker_process.h) and recording how each
// ended.
#include "server/scheduler.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/artifacts.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/data_layout.h"
#include "server/search_core.h"
#include "server/worker_process.h"

namespace qsearch::server {
namespace {

namespace fs = std::filesystem;

google::protobuf::Timestamp Now() {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  google::protobuf::Timestamp t;
  t.set_seconds(us / 1000000);
  t.set_nanos(static_cast<int>(us % 1000000) * 1000);
  return t;
}

std::string LastLine(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!absl::StripAsciiWhitespace(line).empty()) last = line;
  }
  return last;
}

}  // namespace

Scheduler::Scheduler(JobStore* store, EventHub* hub, SchedulerOptions options)
    : store_(store), hub_(hub), options_(std::move(options)), leased_(store->Shared()) {
  if (options_.workers < 0) options_.workers = 0;
  if (options_.devices.empty()) options_.devices = {"cpu"};
}

Scheduler::~Scheduler() { Shutdown(); }

std::string Scheduler::JobDir(const std::string& name) const {
  return (fs::path(options_.data_dir) / name).string();  // name is "jobs/<id>"
}

int Scheduler::running() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& [name, r] : running_) n += r.done ? 0 : 1;
  return n;
}

absl::Status Scheduler::Start() {
  if (!fs::exists(options_.worker_binary)) {
    return absl::FailedPreconditionError(absl::StrCat("worker binary not found at ", options_.worker_binary));
  }
  dispatcher_ = std::thread([this] { DispatchLoop(); });
  return absl::OkStatus();
}

void Scheduler::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void Scheduler::ReapDone() {
  for (auto it = running_.begin(); it != running_.end();) {
    if (it->second.done) {
      if (it->second.thread.joinable()) it->second.thread.join();
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
}

void Scheduler::DispatchLoop() {
  std::vector<std::string> mine;  // jobs whose workers run here
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      // Wakes come with every queued job and every finished worker; a poll each second
      // besides catches anything else (a job another process queued, a store hiccup).
      absl::Time next = absl::Now() + absl::Seconds(1);
      for (const auto& [name, r] : running_) next = std::min(next, r.kill_at);
      mu_.AwaitWithDeadline(absl::Condition(
                                +[](Scheduler* s) ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->wake_ || s->stopping_; }, this),
                            next);
      if (stopping_) return;
      wake_ = false;
      ReapDone();
      const absl::Time now = absl::Now();
      for (auto& [name, r] : running_) {
        if (r.done || r.pid <= 0 || r.kill_at > now) continue;
        kill(r.pid, SIGKILL);  // it ignored SIGTERM
        r.kill_at = absl::InfiniteFuture();
      }
      for (const auto& [name, r] : running_) {
        if (!r.done && !r.cancel && !leased_) mine.push_back(name);
      }
    }
    if (leased_) {  // leases: KeepLease sees cancels; claims replace the queue scan
      ClaimJobs();
      continue;
    }
    // A job cancelled through another server sharing the store: its worker runs here.
    for (const std::string& name : mine) {
      auto tenant = store_->TenantOf(name);
      auto job = tenant.ok() ? store_->Get(*tenant, name) : tenant.status();
      if (job.ok() && job->state() == v1::CANCELLED) StopWorker(name);
    }
    mine.clear();
    // Interrupted jobs first (resume), then the queue, oldest first. Names only: a full
    // job is read when it starts.
    std::vector<std::string> candidates;
    if (auto r = store_->NamesInState(v1::RUNNING); r.ok()) candidates = *r;
    if (auto q = store_->NamesInState(v1::QUEUED); q.ok()) candidates.insert(candidates.end(), q->begin(), q->end());
    for (const std::string& name : candidates) {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      if (running_.count(name)) continue;
      int active = 0;
      for (const auto& [n, r] : running_) active += r.done ? 0 : 1;
      if (active >= options_.workers) break;
      std::optional<Placement> placed;
      bool devices_busy = false;
      auto updated = store_->Update(name, [&](v1::SearchJob& j) -> absl::Status {
        if (j.state() != v1::QUEUED && j.state() != v1::RUNNING) return absl::FailedPreconditionError("not runnable");
        placed = Place(j.spec().world_size());
        devices_busy = !placed;
        if (devices_busy) return absl::UnavailableError("every GPU of this node is busy");
        if (j.state() == v1::QUEUED) *j.mutable_start_time() = Now();
        j.set_state(v1::RUNNING);
        j.set_attempts(j.attempts() + 1);
        return absl::OkStatus();
      });
      if (devices_busy) break;  // nothing else fits either until a job ends
      if (!updated.ok() || !placed) continue;
      Launch(*updated, *placed, /*fence=*/0);
    }
  }
}

void Scheduler::ClaimJobs() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      int active = 0;
      for (const auto& [n, r] : running_) active += r.done ? 0 : 1;
      if (active >= options_.workers || !Place(1)) return;
    }
    // None to claim, or the store is unreachable: the next wake or poll tries again.
    absl::StatusOr<v1::SearchJob> job = store_->Claim(options_.agent, options_.lease_seconds);
    if (!job.ok()) return;
    const std::string name = job->name();
    absl::MutexLock lock(&mu_);
    if (running_.count(name) || stopping_) {
      // This node's earlier run of it (its lease lost) has not ended yet, or we stop: let
      // the claim go at once.
      (void)store_->Release(name, job->attempts());
      return;
    }
    const std::optional<Placement> placed = Place(job->spec().world_size());
    if (!placed) {  // cannot happen: only this loop takes devices, and one was free
      (void)store_->Release(name, job->attempts());
      return;
    }
    Launch(*job, *placed, job->attempts());
  }
}

void Scheduler::Launch(const v1::SearchJob& job, const Placement& placed, std::int64_t fence) {
  next_device_ = placed.next;
  Running& r = running_[job.name()];
  r.fence = fence;
  r.gpus = placed.gpus;
  r.thread = std::thread([this, job, device = placed.device] { RunJob(job, device); });
  hub_->Notify(job.name());
}

std::optional<Scheduler::Placement> Scheduler::Place(int world) const {
  const int n = static_cast<int>(options_.devices.size());
  std::vector<bool> held(n, false);
  for (const auto& [name, r] : running_) {
    if (r.done) continue;
    for (int g : r.gpus) held[g] = true;
  }
  auto is_gpu = [&](int i) { return absl::StartsWith(options_.devices[i], "cuda:"); };
  std::vector<int> free_gpus;  // in turn, from the next entry on
  for (int k = 0; k < n; ++k) {
    const int i = (next_device_ + k) % n;
    if (!is_gpu(i) && free_gpus.empty()) return Placement{options_.devices[i], {}, (i + 1) % n};
    if (is_gpu(i) && !held[i]) free_gpus.push_back(i);
  }
  if (free_gpus.empty()) return std::nullopt;
  // One GPU per process when that many are free; otherwise the processes share the first.
  // Two entries naming one GPU (shared on purpose) count once for one job.
  std::vector<int> take;
  std::vector<std::string> names;
  for (int g : free_gpus) {
    if (static_cast<int>(take.size()) == std::max(1, world)) break;
    if (std::find(names.begin(), names.end(), options_.devices[g]) != names.end()) continue;
    take.push_back(g);
    names.push_back(options_.devices[g]);
  }
  if (static_cast<int>(take.size()) < std::max(1, world)) {
    take.resize(1);
    names.resize(1);
  }
  return Placement{absl::StrJoin(names, ","), take, (take.front() + 1) % n};
}

std::int64_t Scheduler::FenceOf(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = running_.find(name);
  return it == running_.end() ? 0 : it->second.fence;
}

void Scheduler::Lose(const std::string& name) {
  {
    absl::MutexLock lock(&mu_);
    auto it = running_.find(name);
    if (it == running_.end()) return;
    it->second.lost = true;
  }
  StopWorker(name);
}

absl::Status Scheduler::FetchCheckpoint(const std::string& name, const std::string& out_dir) {
  const absl::Status s =
      store_->FetchBlob(JobBlobKey(name, kCheckpointFile), (fs::path(out_dir) / kCheckpointFile).string());
  return absl::IsNotFound(s) ? absl::OkStatus() : s;  // none: the earlier run wrote no epoch
}

void Scheduler::KeepLease(const std::string& name, std::int64_t fence, const std::string& out_dir) {
  const auto period = absl::Seconds(std::max(0.2, options_.lease_seconds / 3));
  const fs::path checkpoint = fs::path(out_dir) / kCheckpointFile;
  fs::file_time_type stored_time{};
  std::uintmax_t stored_size = 0;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto gone = [this, &name]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        auto it = running_.find(name);
        return stopping_ || it == running_.end() || it->second.pid < 0;
      };
      if (mu_.AwaitWithTimeout(absl::Condition(&gone), period)) return;
    }
    const absl::Status renewed = store_->Renew(name, fence, options_.lease_seconds);
    if (absl::IsAborted(renewed) || absl::IsNotFound(renewed)) {  // claimed again elsewhere, or deleted
      Lose(name);
      return;
    }
    if (absl::IsFailedPrecondition(renewed)) {  // cancelled through a server
      StopWorker(name);
      return;
    }
    // Unavailable: run on. Should the store stay away past the lease, another node claims
    // the job and this run's next write is refused.
    std::error_code ec;
    const auto time = fs::last_write_time(checkpoint, ec);
    const auto size = ec ? 0 : fs::file_size(checkpoint, ec);
    if (ec || (time == stored_time && size == stored_size)) continue;
    const absl::Status put = store_->PutBlob(JobBlobKey(name, kCheckpointFile), checkpoint.string(), name, fence);
    if (absl::IsAborted(put) || absl::IsNotFound(put)) {
      Lose(name);
      return;
    }
    if (put.ok()) {
      stored_time = time;
      stored_size = size;
    }
  }
}

void Scheduler::RunJob(v1::SearchJob job, std::string device) {
  const std::string name = job.name();
  RunWorker(std::move(job), std::move(device));
  bool forget;
  {
    absl::MutexLock lock(&mu_);
    forget = running_[name].forget;
    running_[name].done = true;
    running_[name].pid = -1;
    wake_ = true;
  }
  std::error_code ec;
  if (forget) {
    fs::remove_all(JobDir(name), ec);
  } else if (leased_) {
    fs::remove_all(fs::path(JobDir(name)) / "out", ec);  // the store holds what is worth keeping
  }
}

void Scheduler::RunWorker(v1::SearchJob job, std::string device) {
  const std::string name = job.name();
  const std::string dir = JobDir(name);
  const std::int64_t fence = FenceOf(name);
  std::error_code ec;
  fs::create_directories(fs::path(dir) / "out", ec);
  const std::string spec_path = (fs::path(dir) / "spec.json").string();
  // The stored spec, defaults applied at Create: what the job record shows is what runs,
  // with its upload references replaced by the blobs they name (for the worker only).
  v1::JobSpec spec = job.spec();
  Redactions redactions = {{dir, name}, {options_.data_dir, "<data dir>"}};
  {
    auto tenant = store_->TenantOf(name);
    for (std::string* path : {spec.mutable_dataset()->mutable_path(), spec.mutable_model_path()}) {
      if (!tenant.ok() || !IsUploadReference(*path)) continue;
      auto blob = LocalUpload(*store_, options_.data_dir, *tenant, *path);
      if (!blob.ok()) {
        Fail(name,
             absl::IsNotFound(blob.status()) ? absl::NotFoundError(absl::StrCat("the upload ", *path, " is gone"))
                                             : blob.status(),
             redactions);
        return;
      }
      redactions.insert(redactions.begin(), {*blob, *path});
      *path = *blob;
    }
  }
  if (leased_ && fence > 1) {  // an earlier run's checkpoint, wherever it ran
    if (absl::Status s = FetchCheckpoint(name, (fs::path(dir) / "out").string()); !s.ok()) {
      Fail(name, s, redactions);
      return;
    }
  }
  {
    std::string json;
    (void)google::protobuf::util::MessageToJsonString(spec, &json);
    std::ofstream out(spec_path, std::ios::trunc);
    out << json;
    if (!out || ec) {
      Fail(name, absl::InternalError("cannot prepare the job directory"), {});
      return;
    }
  }
  WorkerLaunch launch;
  launch.binary = options_.worker_binary;
  launch.args = {"--spec", spec_path, "--out", (fs::path(dir) / "out").string(), "--resume",
                 "--threads", std::to_string(options_.threads_per_worker), "--device", device};
  // Each run of the job gets its whole time limit (a resumed run starts afresh).
  const double limit = spec.time_limit_seconds() > 0
                           ? std::min<double>(static_cast<double>(spec.time_limit_seconds()), options_.max_job_seconds)
                           : options_.max_job_seconds;
  if (options_.sandbox) {
    const std::int64_t cpu = static_cast<std::int64_t>(limit) * std::max(1, options_.threads_per_worker) + 60;
    launch.args.insert(launch.args.end(), {"--sandbox", "--memory-mb", std::to_string(options_.worker_memory_mb),
                                           "--max-file-mb", std::to_string(options_.worker_max_file_mb),
                                           "--cpu-seconds", std::to_string(cpu)});
  }
  launch.log_path = (fs::path(dir) / "worker.log").string();
  launch.max_log_bytes = options_.max_log_bytes;
  launch.time_limit_seconds = limit;
  launch.progress_timeout_seconds = options_.progress_timeout_seconds;
  auto worker = WorkerProcess::Start(launch);
  if (!worker.ok()) {
    Fail(name, worker.status(), {});
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    Running& r = running_[name];
    r.pid = (*worker)->pid();
    if (r.cancel || stopping_) {  // stopped before it started
      (*worker)->Signal(SIGTERM);
      r.kill_at = absl::Now() + absl::Seconds(options_.cancel_grace_seconds);
    }
  }
  std::thread lease;
  if (leased_) {
    lease = std::thread([this, name, fence, out = (fs::path(dir) / "out").string()] { KeepLease(name, fence, out); });
  }
  const absl::Status channel = (*worker)->ReadChannel([&](const v1::JobEvent& e) {
    const auto stored = store_->AppendEvent(name, e, e.sequence(), fence);
    if (stored.ok()) hub_->Notify(name);
    if (absl::IsAborted(stored.status())) Lose(name);  // claimed again elsewhere, or ended
  });
  const int status = (*worker)->Wait();
  {
    absl::MutexLock lock(&mu_);
    running_[name].pid = -1;  // ends KeepLease
  }
  if (lease.joinable()) lease.join();
  Finish(name, **worker, channel, status, redactions);
}

void Scheduler::Finish(const std::string& name, const WorkerProcess& worker, const absl::Status& channel,
                       int wait_status, const Redactions& redactions) {
  bool cancel, stopping, forget, lost;
  std::int64_t fence;
  {
    absl::MutexLock lock(&mu_);
    cancel = running_[name].cancel;
    forget = running_[name].forget;
    lost = running_[name].lost;
    fence = running_[name].fence;
    stopping = stopping_;
  }
  if (forget || lost) return;  // deleted, or another node's run writes the job now
  const std::optional<internal::WorkerStatus>& reported = worker.status();
  if (channel.ok() && reported && reported->code() == 0 && worker.result()) {
    const fs::path out = fs::path(JobDir(name)) / "out";
    std::vector<v1::Artifact> artifacts;
    for (const ArtifactKind& kind : kArtifactKinds) {
      const fs::path p = out / kind.file;
      std::error_code ec;
      const auto size = fs::file_size(p, ec);
      if (ec) continue;
      v1::Artifact a;
      a.set_kind(kind.kind);
      a.set_size(static_cast<std::int64_t>(size));
      a.set_sha256(Sha256File(p.string()).value_or(""));
      artifacts.push_back(a);
      if (!leased_) continue;
      // Into the store before the job SUCCEEDS: any server then serves the download.
      const absl::Status put = store_->PutBlob(JobBlobKey(name, kind.file), p.string(), name, fence);
      if (absl::IsAborted(put) || absl::IsNotFound(put)) return;
      if (!put.ok()) {
        Fail(name, absl::UnavailableError(absl::StrCat("cannot store the ", kind.kind, " artifact: ", put.message())),
             redactions);
        return;
      }
    }
    (void)store_->Update(name, [&](v1::SearchJob& j) {
      RETURN_IF_ERROR(store_internal::CheckFence(j, fence));
      j.set_state(v1::SUCCEEDED);
      *j.mutable_end_time() = Now();
      *j.mutable_result() = *worker.result();
      j.clear_artifacts();
      for (const auto& a : artifacts) *j.add_artifacts() = a;
      return absl::OkStatus();
    });
    hub_->Notify(name);
    return;
  }
  if (cancel) {
    Terminal(name, v1::CANCELLED, absl::CancelledError("cancelled"));
    return;
  }
  if (stopping) {  // stays RUNNING; resumed from its checkpoint at the next start (or elsewhere)
    if (leased_) (void)store_->Release(name, fence);
    return;
  }
  if (!channel.ok()) {
    Fail(name, channel, redactions);
    return;
  }
  if (reported && reported->code() != 0) {
    // The worker's own verdict, with its canonical code.
    Fail(name, absl::Status(static_cast<absl::StatusCode>(reported->code()), reported->message()), redactions);
    return;
  }
  // No verdict: it crashed, or never ran. Its log's last line says what it last said.
  const std::string last = LastLine((fs::path(JobDir(name)) / "worker.log").string());
  const std::string said = last.empty() ? "" : absl::StrCat("; its last output: ", last);
  if (WIFEXITED(wait_status)) {
    const int code = WEXITSTATUS(wait_status);
    Fail(name, absl::InternalError(code == 127 ? absl::StrCat("cannot run the worker binary ", options_.worker_binary)
                                               : absl::StrCat("the worker exited with status ", code,
                                                              " without reporting a result", said)), redactions);
    return;
  }
  const int sig = WTERMSIG(wait_status);
  Fail(name, absl::InternalError(absl::StrCat("the worker process crashed (signal ", sig, ": ", strsignal(sig), ")", said)), redactions);
}

void Scheduler::Fail(const std::string& name, const absl::Status& why, const Redactions& redactions) {
  // A tenant sees its references and job name, never the server's paths.
  std::string message(why.message());
  for (const auto& [path, shown] : redactions) message = absl::StrReplaceAll(message, {{path, shown}});
  Terminal(name, v1::FAILED, absl::Status(why.code(), message));
}

void Scheduler::Terminal(const std::string& name, v1::JobState state, const absl::Status& why) {
  const std::string message(why.message());
  const std::int64_t fence = FenceOf(name);
  const auto set = [&](v1::SearchJob& j) -> absl::Status {
    // A job ended elsewhere (cancelled through another server) keeps that end.
    if (IsTerminal(j.state())) return absl::FailedPreconditionError("ended already");
    RETURN_IF_ERROR(store_internal::CheckFence(j, fence));
    j.set_state(state);
    *j.mutable_end_time() = Now();
    if (state == v1::FAILED) {
      j.set_error_message(message);
      j.set_error_code(static_cast<int>(why.code()));
    }
    return absl::OkStatus();
  };
  // A final state must land: a store that fails (a full disk, a locked file) is tried
  // again for about a minute rather than leaving the job RUNNING.
  absl::StatusOr<v1::SearchJob> updated = store_->Update(name, set);
  const auto final = [](const absl::Status& s) {
    return s.ok() || absl::IsNotFound(s) || absl::IsFailedPrecondition(s) || absl::IsAborted(s);
  };
  for (int attempt = 0; !final(updated.status()) && attempt < 12; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(5000, 250 << attempt)));
    updated = store_->Update(name, set);
  }
  if (absl::IsFailedPrecondition(updated.status()) || absl::IsAborted(updated.status())) return;
  if (!updated.ok()) {
    std::fprintf(stderr, "qsearch-server: cannot record that %s is %s: %s\n", name.c_str(),
                 v1::JobState_Name(state).c_str(), std::string(updated.status().message()).c_str());
    return;
  }
  v1::JobEvent e;
  e.set_phase(v1::PHASE_DONE);
  e.set_message(state == v1::FAILED ? absl::StrCat("failed: ", message) : message);
  (void)store_->AppendEvent(name, e);
  hub_->Notify(name);
}

absl::StatusOr<v1::SearchJob> Scheduler::Cancel(const std::string& name) {
  // A queued job never started: cancel it in the store directly (atomically, so a
  // dispatcher that picks it at the same moment sees CANCELLED and skips it).
  bool was_queued = false;
  ASSIGN_OR_RETURN(v1::SearchJob job, store_->Update(name, [&](v1::SearchJob& j) {
    if (j.state() == v1::QUEUED) {
      was_queued = true;
      j.set_state(v1::CANCELLED);
      *j.mutable_end_time() = Now();
    }
    return absl::OkStatus();
  }));
  if (was_queued) {
    v1::JobEvent e;
    e.set_phase(v1::PHASE_DONE);
    e.set_message("cancelled before it started");
    (void)store_->AppendEvent(name, e);
    hub_->Notify(name);
    return store_->Update(name, [](v1::SearchJob&) { return absl::OkStatus(); });
  }
  if (IsTerminal(job.state())) return job;
  if (!StopWorker(name)) {
    // RUNNING in the store but no worker here (just restarted): nothing to stop.
    Terminal(name, v1::CANCELLED, absl::CancelledError("cancelled"));
    return store_->Update(name, [](v1::SearchJob&) { return absl::OkStatus(); });
  }
  return job;
}

bool Scheduler::StopWorker(const std::string& name) {
  int pid = -1;
  {
    absl::MutexLock lock(&mu_);
    auto it = running_.find(name);
    if (it == running_.end()) return false;
    it->second.cancel = true;
    pid = it->second.pid;
    // The dispatcher escalates to SIGKILL if the worker has not stopped by then (e.g.
    // busy loading data).
    if (pid > 0 && it->second.kill_at == absl::InfiniteFuture()) {
      it->second.kill_at = absl::Now() + absl::Seconds(options_.cancel_grace_seconds);
      wake_ = true;
    }
  }
  if (pid > 0) kill(pid, SIGTERM);
  return true;
}

void Scheduler::Forget(const std::string& name) {
  int pid = -1;
  {
    absl::MutexLock lock(&mu_);
    auto it = running_.find(name);
    if (it != running_.end() && !it->second.done) {
      it->second.forget = true;
      it->second.cancel = true;
      pid = it->second.pid;
    }
  }
  if (pid > 0) {
    kill(pid, SIGKILL);
    return;  // RunJob removes the directory once the worker is gone
  }
  std::error_code ec;
  fs::remove_all(JobDir(name), ec);
}

void Scheduler::Shutdown() {
  std::vector<int> pids;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !dispatcher_.joinable()) return;
    stopping_ = true;
    for (auto& [name, r] : running_) {
      if (!r.done && r.pid > 0) pids.push_back(r.pid);
    }
  }
  if (dispatcher_.joinable()) dispatcher_.join();
  for (int pid : pids) kill(pid, SIGTERM);  // each stops at its next step; its checkpoint stays
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (running() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, r] : running_) {
      if (!r.done && r.pid > 0) kill(r.pid, SIGKILL);
    }
  }
  std::map<std::string, Running> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(running_);
  }
  for (auto& [name, r] : left) {
    if (r.thread.joinable()) r.thread.join();
  }
}

}  // namespace qsearch::server
