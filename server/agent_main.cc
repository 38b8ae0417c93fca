// qsearch-agent: a worker node. It runs no API: it claims jobs from a shared PostgreSQL job
// store under leases, runs them in qsearch-worker processes as a server would, and puts
// their events, checkpoints and artifacts into the store, so it needs nothing in common
// with the servers but that database. SIGTERM stops its workers (they keep their
// checkpoints) and lets their leases go, so other nodes resume those jobs at once.
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include <boost/program_options.hpp>

#include "absl/synchronization/mutex.h"
#include "common/cli.h"
#include "server/event_hub.h"
#include "server/job_store.h"
#include "server/node_options.h"
#include "server/scheduler.h"

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  std::string store_at, data_dir;
  qsearch::server::NodeFlags node;
  po::options_description desc(
      "qsearch-agent: runs qsearch jobs from a shared PostgreSQL job store (the servers' --store)");
  desc.add_options()("help,h", "show this help")(
      "store", po::value(&store_at)->required(), "the job store the servers use: postgresql://user@host:port/db")(
      "data-dir", po::value(&data_dir)->default_value("qsearch-agent-data"),
      "this node's scratch: running jobs' directories and a cache of the uploads they read");
  qsearch::server::AddNodeFlags(desc, node, "jobs this agent runs at the same time, one worker process each");
  po::variables_map vm;
  if (auto exit_code = qsearch::ParseCommandLine(argc, argv, desc, vm, "qsearch-agent")) return *exit_code;
  auto options = qsearch::server::SchedulerOptionsFrom(node, data_dir, argv[0]);
  if (options.ok() && options->workers < 1) options = absl::InvalidArgumentError("--workers must be at least 1");
  if (!options.ok()) {
    std::cerr << "qsearch-agent: " << options.status().message() << "\n";
    return absl::IsInvalidArgument(options.status()) ? 2 : 1;
  }

  // SIGTERM / SIGINT are awaited (sigwait): blocked before any thread starts.
  const sigset_t signals = qsearch::server::BlockStopSignals();

  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) {
    std::cerr << "qsearch-agent: cannot create --data-dir " << data_dir << ": " << ec.message() << "\n";
    return 1;
  }
  qsearch::server::EventHub hub;  // the scheduler's notices; no Watch stream listens here
  absl::Mutex scheduler_mu;
  qsearch::server::Scheduler* scheduler = nullptr;
  auto store = qsearch::server::JobStore::Open(store_at);
  absl::Status ready = store.status();
  if (ready.ok() && !(*store)->Shared()) {
    ready = absl::InvalidArgumentError(
        "--store must be a PostgreSQL URI the servers share; with an SQLite store the server runs its own workers");
  }
  if (ready.ok()) {
    // A job queued through any server, or a lease let go, wakes the claim loop at once.
    ready = (*store)->Subscribe([&](const std::string&) {
      absl::MutexLock lock(&scheduler_mu);
      if (scheduler != nullptr) scheduler->Wake();
    });
  }
  if (!ready.ok()) {
    std::cerr << "qsearch-agent: " << ready.message() << "\n";
    return 1;
  }
  {
    qsearch::server::Scheduler running(store->get(), &hub, *options);
    if (absl::Status s = running.Start(); !s.ok()) {
      std::cerr << "qsearch-agent: " << s.message() << "\n";
      return 1;
    }
    {
      absl::MutexLock lock(&scheduler_mu);
      scheduler = &running;
    }
    std::printf("qsearch-agent %s running up to %d job%s (data dir %s, worker binary %s)\n", options->agent.c_str(),
                options->workers, options->workers == 1 ? "" : "s", data_dir.c_str(), options->worker_binary.c_str());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&signals, &sig);
    std::printf("qsearch-agent: %s, stopping; running jobs keep their checkpoints and resume on another node\n",
                sig == SIGTERM ? "SIGTERM" : "SIGINT");
    std::fflush(stdout);
    {
      absl::MutexLock lock(&scheduler_mu);
      scheduler = nullptr;
    }
    running.Shutdown();
  }
  return 0;
}
