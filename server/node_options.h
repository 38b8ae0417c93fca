// The command-line options of a process that runs workers, shared by qsearch-server and
// qsearch-agent: how many workers, on which devices, how confined, and the lease they
// hold on a shared store.
#ifndef QSEARCH_SERVER_NODE_OPTIONS_H_
#define QSEARCH_SERVER_NODE_OPTIONS_H_

#include <signal.h>

#include <string>

#include <boost/program_options.hpp>

#include "absl/status/statusor.h"
#include "server/scheduler.h"

namespace qsearch::server {

struct NodeFlags {
  std::string worker, devices = "cpu", sandbox = "on", name;
  int workers = 1, threads_per_worker = 0;
  std::int64_t worker_memory_mb = 16384;
  double max_job_seconds = 86400, progress_timeout_seconds = 600, lease_seconds = 20;
};

// Adds --workers (with `workers_help`), --threads-per-worker, --devices, --worker,
// --sandbox, --worker-memory-mb, --max-job-seconds, --progress-timeout-seconds,
// --lease-seconds and --node-name.
void AddNodeFlags(boost::program_options::options_description& desc, NodeFlags& flags, const char* workers_help);

// The scheduler's options for `data_dir`; InvalidArgument for a bad value,
// FailedPrecondition for a sandbox this kernel cannot give. `argv0` locates the worker
// binary when --worker is not given.
absl::StatusOr<SchedulerOptions> SchedulerOptionsFrom(const NodeFlags& flags, const std::string& data_dir,
                                                      const char* argv0);

// Blocks SIGTERM and SIGINT (the process awaits them with sigwait) and ignores SIGPIPE;
// called before any other thread starts, so every thread inherits the mask. Returns the
// set to sigwait on.
sigset_t BlockStopSignals();

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_NODE_OPTIONS_H_
