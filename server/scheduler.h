// Scheduler: runs queued jobs in qsearch-worker child processes, at most `workers` at a
// time, and records what they report over their typed channel (worker_process.h): it
// stores each event (the store numbers them), wakes watchers, and when the worker exits
// sets the job's final state:
//   status OK + result          SUCCEEDED (the reported result; artifacts indexed with sha256)
//   cancel requested            CANCELLED (SIGTERM, then SIGKILL after a grace period)
//   server shutting down        stays RUNNING; the next Start() resumes it from its checkpoint
//   an error status             FAILED with the worker's canonical code and message
//   no status (crash, signal)   FAILED INTERNAL "worker crashed (signal N)": the server is
//                               unaffected
//   a malformed channel         FAILED with the reader's code (the worker is killed)
// Workers die with the server (PR_SET_PDEATHSIG), so a restarted server never finds an
// orphan still writing a job's directory.
#ifndef QSEARCH_SERVER_SCHEDULER_H_
#define QSEARCH_SERVER_SCHEDULER_H_

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/event_hub.h"
#include "server/job_store.h"
#include "server/worker_process.h"

namespace qsearch::server {

struct SchedulerOptions {
  std::string worker_binary;    // path of qsearch-worker
  std::string data_dir;         // job directories live in data_dir/jobs/<id>
  int workers = 1;              // 0: store jobs, run none (an API-only node)
  int threads_per_worker = 1;
  std::vector<std::string> devices = {"cpu"};
  double cancel_grace_seconds = 3;  // SIGTERM, then SIGKILL
  // Workers confine themselves (search/sandbox.h): read only their inputs, write only
  // their output, no network, no signals to the server. Off only where every tenant is
  // trusted or the kernel has no Landlock.
  bool sandbox = true;
  std::int64_t worker_memory_mb = 16384;     // address space of one worker
  std::int64_t worker_max_file_mb = 16384;   // largest file a worker writes
  double max_job_seconds = 86400;            // caps each job's time_limit_seconds
  double progress_timeout_seconds = 600;     // no frame for this long: the job FAILS
  std::int64_t max_log_bytes = 1 << 20;      // of a worker's output, per run
};

class Scheduler {
 public:
  Scheduler(JobStore* store, EventHub* hub, SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Starts dispatching. Jobs the store holds as RUNNING (the server stopped while they ran)
  // go first and resume from their checkpoints.
  absl::Status Start();
  // A job was queued.
  void Wake();
  // QUEUED: CANCELLED at once. RUNNING: the worker is stopped; the job turns CANCELLED
  // when it exits (within the grace period). Finished jobs are returned unchanged.
  absl::StatusOr<v1::SearchJob> Cancel(const std::string& name);
  // Stops the job's worker if any and removes its directory (the store row is the
  // caller's to delete).
  void Forget(const std::string& name);
  // Stops dispatching; asks every worker to stop (they keep their last epoch checkpoint)
  // and waits for them. Their jobs stay RUNNING for the next Start().
  void Shutdown();

  std::string JobDir(const std::string& name) const;
  int running() const;

 private:
  // Stops this server's worker of `name` (SIGTERM, then SIGKILL after the grace period);
  // false when no worker of it runs here.
  bool StopWorker(const std::string& name);
  struct Running {
    int pid = -1;
    bool cancel = false;
    bool forget = false;
    bool done = false;
    std::thread thread;
  };
  void DispatchLoop();
  void RunJob(v1::SearchJob job, std::string device);
  // Server paths a job's messages must not show, and what to show instead.
  using Redactions = std::vector<std::pair<std::string, std::string>>;
  void Finish(const std::string& name, const WorkerProcess& worker, const absl::Status& channel, int wait_status,
              const Redactions& redactions);
  void Fail(const std::string& name, const absl::Status& why, const Redactions& redactions);
  void Terminal(const std::string& name, v1::JobState state, const absl::Status& why);
  void ReapDone() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  JobStore* store_;
  EventHub* hub_;
  SchedulerOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Running> running_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  int next_device_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread dispatcher_;
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_SCHEDULER_H_
