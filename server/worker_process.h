// One qsearch-worker child process and its typed channel: the worker writes
// length-prefixed qsearch.internal.WorkerMessage frames on fd 3 (events, then the result
// and a final status with its canonical code); its stdout and stderr go to a log file.
// Thread-compatible: one thread reads the channel and waits; Signal() may come from any.
#ifndef QSEARCH_SERVER_WORKER_PROCESS_H_
#define QSEARCH_SERVER_WORKER_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/internal/worker.pb.h"
#include "qsearch/v1/job.pb.h"

namespace qsearch::server {

struct WorkerLaunch {
  std::string binary;
  std::vector<std::string> args;  // after the binary; --channel-fd is added
  // stdout and stderr, appended through a pipe: at most max_log_bytes per run, then a
  // note of how much was dropped (what a model prints cannot fill the disk).
  std::string log_path;
  std::int64_t max_log_bytes = 1 << 20;
  std::size_t max_frame_bytes = std::size_t{4} << 20;
  // The run ends DEADLINE_EXCEEDED when no frame (event, heartbeat) arrives for
  // `progress_timeout`, or when it lasts longer than `time_limit` (0: no limit).
  double progress_timeout_seconds = 600;
  double time_limit_seconds = 0;
  // Events beyond this many per second (averaged, bursts of 10x allowed) end it
  // RESOURCE_EXHAUSTED: a worker reports a handful per epoch.
  double max_events_per_second = 50;
};

class WorkerProcess {
 public:
  // Forks and execs the worker (it dies with the server: PR_SET_PDEATHSIG); Internal
  // when no process or pipe can be made.
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(const WorkerLaunch& launch);
  ~WorkerProcess();
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig) const;

  // Reads frames until the worker closes the channel, handing each event to `on_event`
  // and keeping the result and status. A malformed or oversized frame, a missed deadline
  // or an event flood stops the reading (the worker is then killed): its error is returned.
  absl::Status ReadChannel(const std::function<void(const v1::JobEvent&)>& on_event);
  // Waits for the worker to exit and its output to be logged; the wait(2) status.
  int Wait();

  const std::optional<v1::JobResult>& result() const { return result_; }
  const std::optional<internal::WorkerStatus>& status() const { return status_; }

 private:
  WorkerProcess(pid_t pid, int channel_fd, const WorkerLaunch& launch)
      : pid_(pid), channel_(channel_fd), launch_(launch) {}

  pid_t pid_;
  int channel_;
  WorkerLaunch launch_;
  std::thread logger_;  // copies the worker's output into the log, capped
  std::optional<v1::JobResult> result_;
  std::optional<internal::WorkerStatus> status_;
};

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_WORKER_PROCESS_H_
