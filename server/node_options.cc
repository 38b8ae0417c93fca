// Options of a node that runs workers.
#include "server/node_options.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "search/device.h"
#include "search/sandbox.h"

namespace qsearch::server {
namespace {

namespace fs = std::filesystem;

// qsearch-worker next to this binary (installed), or in the build tree's search/.
std::string DefaultWorker(const char* argv0) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) self = fs::absolute(argv0);
  for (const fs::path& p :
       {self.parent_path() / "qsearch-worker", self.parent_path().parent_path() / "search" / "qsearch-worker"}) {
    if (fs::exists(p)) return p.string();
  }
  return "qsearch-worker";
}

}  // namespace

void AddNodeFlags(boost::program_options::options_description& desc, NodeFlags& f, const char* workers_help) {
  namespace po = boost::program_options;
  desc.add_options()("workers", po::value(&f.workers)->default_value(f.workers), workers_help)(
      "threads-per-worker", po::value(&f.threads_per_worker)->default_value(0),
      "intra-op threads per worker (0: cores / workers)")(
      "devices", po::value(&f.devices)->default_value(f.devices),
      "comma-separated devices workers are bound to in turn, e.g. cpu or cuda:0,cuda:1")(
      "worker", po::value(&f.worker), "path of qsearch-worker (default: next to this binary)")(
      "sandbox", po::value(&f.sandbox)->default_value(f.sandbox),
      "on: every worker confines itself (Landlock, seccomp, namespaces, rlimits; refused on a kernel without "
      "Landlock); off: workers run unconfined (only where every tenant is trusted)")(
      "worker-memory-mb", po::value(&f.worker_memory_mb)->default_value(f.worker_memory_mb),
      "address-space limit of each worker (with --sandbox on)")(
      "max-job-seconds", po::value(&f.max_job_seconds)->default_value(f.max_job_seconds),
      "wall-clock limit of a job's run; caps each spec's time_limit_seconds")(
      "progress-timeout-seconds", po::value(&f.progress_timeout_seconds)->default_value(f.progress_timeout_seconds),
      "a worker that reports nothing (events, heartbeats) this long is stopped and its job FAILS")(
      "lease-seconds", po::value(&f.lease_seconds)->default_value(f.lease_seconds),
      "on a PostgreSQL store: how long a claimed job stays this node's without a renewal (renewed every third "
      "of it); a node that dies loses its jobs to the others after this long")(
      "node-name", po::value(&f.name), "this node's name in leases (default: host name and process id)");
}

absl::StatusOr<SchedulerOptions> SchedulerOptionsFrom(const NodeFlags& f, const std::string& data_dir,
                                                      const char* argv0) {
  if (f.workers < 0) return absl::InvalidArgumentError("--workers must not be negative");
  if (f.sandbox != "on" && f.sandbox != "off") return absl::InvalidArgumentError("--sandbox is on or off");
  if (!(f.lease_seconds >= 0.5)) return absl::InvalidArgumentError("--lease-seconds must be at least 0.5");
  if (f.sandbox == "on" && f.workers > 0 && search::LandlockAbi() == 0) {
    return absl::FailedPreconditionError(
        "this kernel offers no Landlock, so workers cannot be confined to their own files; run on Linux 5.13+ with "
        "Landlock enabled, or pass --sandbox=off if every tenant is trusted");
  }
  SchedulerOptions o;
  o.worker_binary = f.worker.empty() ? DefaultWorker(argv0) : f.worker;
  o.data_dir = data_dir;
  o.workers = f.workers;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  o.threads_per_worker = f.threads_per_worker > 0 ? f.threads_per_worker : std::max(1, cores / std::max(1, f.workers));
  o.devices = absl::StrSplit(f.devices, ',', absl::SkipEmpty());
  if (o.devices.empty()) return absl::InvalidArgumentError("--devices names no device: give cpu or cuda:N");
  for (const std::string& d : o.devices) {
    // The name only: whether a GPU is usable is the worker's to find out (its LibTorch, its
    // sandbox); asking here would start the CUDA driver in a process that runs no job.
    if (auto parsed = search::ParseDevice(d); !parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--devices: ", parsed.status().message()));
    }
  }
  o.sandbox = f.sandbox == "on";
  o.worker_memory_mb = f.worker_memory_mb;
  o.max_job_seconds = f.max_job_seconds;
  o.progress_timeout_seconds = f.progress_timeout_seconds;
  o.lease_seconds = f.lease_seconds;
  if (f.name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    o.agent = absl::StrCat(host, ":", getpid());
  } else {
    o.agent = f.name;
  }
  return o;
}

sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return signals;
}

}  // namespace qsearch::server
