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
//
// On a shared store (JobStore::Shared: PostgreSQL) the scheduler is one of several nodes
// (servers with workers, qsearch-agent processes): it claims jobs under a lease, renews it
// every third of --lease-seconds, fences every write with the claim's token, fetches
// upload blobs from the store, keeps the worker's checkpoint in the store as it changes
// and puts the artifacts there before the job SUCCEEDS. A job whose lease is lost (this
// node was cut off) or that was cancelled or deleted elsewhere has its worker stopped
// and gets no further write from this node; a job a dead node held is claimed again and
// resumes from the stored checkpoint.
#ifndef QSEARCH_SERVER_SCHEDULER_H_
#define QSEARCH_SERVER_SCHEDULER_H_

#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/event_hub.h"
#include "server/job_store.h"
#include "server/worker_process.h"

namespace qsearch::server {

struct SchedulerOptions {
  std::string worker_binary;    // path of qsearch-worker
  std::string data_dir;         // job directories live in data_dir/jobs/<id>
  int workers = 1;              // 0: store jobs, run none (an API-only node)
  int threads_per_worker = 1;
  // Workers are bound to these in turn. A GPU entry ("cuda:N") runs one job at a time
  // (list it twice to share it); the CPU runs as many as `workers` allows. A data-parallel
  // job of W processes takes W free GPUs when there are, else one its processes share.
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
  // On a shared store: this node's name in leases, and how long a lease lasts unrenewed.
  std::string agent = "qsearch";
  double lease_seconds = 20;
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
    bool lost = false;        // leased: another claim holds the job now, or it is gone
    std::int64_t fence = 0;   // leased: the claim's token (the job's attempts)
    absl::Time kill_at = absl::InfiniteFuture();  // stopping: SIGKILL from then on
    bool done = false;
    std::vector<int> gpus;    // the GPU entries of options_.devices it holds
    std::thread thread;
  };
  // Where a job of `world` processes runs: `device` for the worker's --device and the GPU
  // entries it holds.
  struct Placement {
    std::string device;
    std::vector<int> gpus;
    int next = 0;  // where the next placement starts looking, once this one is used
  };
  // The next entry a job can run on (round robin over the list); nullopt while every
  // entry is a GPU some job holds.
  std::optional<Placement> Place(int world) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts the job's run on `placed` (fence: the claim's token, 0 unleased).
  void Launch(const v1::SearchJob& job, const Placement& placed, std::int64_t fence)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Leased: claims jobs while slots are free.
  void ClaimJobs();
  // Leased: renews the lease and keeps the checkpoint in the store until `name`'s worker
  // is done; stops the worker when the lease is lost or the job was ended elsewhere.
  void KeepLease(const std::string& name, std::int64_t fence, const std::string& out_dir);
  // Leased: the checkpoint an earlier run of the job put in the store, into `out_dir`.
  absl::Status FetchCheckpoint(const std::string& name, const std::string& out_dir);
  std::int64_t FenceOf(const std::string& name);
  // Leased: marks the run lost and stops its worker.
  void Lose(const std::string& name);
  void DispatchLoop();
  void RunJob(v1::SearchJob job, std::string device);
  void RunWorker(v1::SearchJob job, std::string device);
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
  const bool leased_;  // the store is shared: claims under leases
  mutable absl::Mutex mu_;
  std::map<std::string, Running> running_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  int next_device_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread dispatcher_;
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_SCHEDULER_H_
