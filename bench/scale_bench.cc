// Scale-out throughput: jobs per minute with 1 and with 2 qsearch-agent nodes on one
// PostgreSQL store (started here: initdb + pg_ctl in a temp dir, 127.0.0.1), behind one
// API server with --workers 0. Each agent runs one job at a time with one intra-op
// thread; every job is the tests' tiny search (mlp, 600 Fashion-MNIST images, one epoch
// per phase), so the figure is what the service adds around short jobs as well as the
// training. For comparison the same jobs run on the single server with its own workers
// (embedded SQLite, --workers 1 and 2): what a user runs today.
// Run: build/bench/scale_bench [jobs, default 12]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "server/testing/server_process.h"
#include "tests/testing/postgres.h"
#include "tests/testing/tiny_spec.h"

namespace {

namespace fs = std::filesystem;

std::string Dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("qsearch_scale_bench_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// Submits `jobs` tiny searches through `server` and waits for all; jobs per minute, or
// a negative number when one did not succeed.
double Run(const qsearch::testing::ServerProcess& server, int jobs, const std::string& tag) {
  qsearch::client::ClientOptions o;
  o.server = server.address();
  auto client = qsearch::client::QsearchClient::Connect(o).value();
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> names;
  for (int i = 0; i < jobs; ++i) {
    qsearch::v1::JobSpec spec = qsearch::testing::TinySpec();
    spec.set_seed(i + 1);
    auto job = client->Create(spec, tag + std::to_string(i));
    if (!job.ok()) return -1;
    names.push_back(job->name());
  }
  for (const auto& name : names) {
    auto done = client->Watch(name, 0, nullptr, nullptr);
    if (!done.ok() || done->state() != qsearch::v1::SUCCEEDED) return -1;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return jobs * 60.0 / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  const int jobs = argc > 1 ? std::stoi(argv[1]) : 12;
  auto pg = qsearch::testing::TestPostgres::Start(Dir("pg"));
  if (!pg.ok()) {
    std::fprintf(stderr, "scale_bench: %s\n", std::string(pg.status().message()).c_str());
    return 1;
  }
  std::printf("%d tiny jobs each, %u cores\n\n| setup | jobs/min |\n|---|---|\n", jobs,
              std::thread::hardware_concurrency());
  for (int workers : {1, 2}) {
    qsearch::testing::ServerProcess server(Dir("sqlite" + std::to_string(workers)),
                                           {"--workers", std::to_string(workers)});
    const double rate = server.ok() ? Run(server, jobs, "sqlite") : -1;
    std::printf("| one server, SQLite, --workers %d | %.1f |\n", workers, rate);
    std::fflush(stdout);
  }
  for (int agents : {1, 2}) {
    auto uri = (*pg)->NewDatabase("scale" + std::to_string(agents));
    if (!uri.ok()) return 1;
    qsearch::testing::ServerProcess server(Dir("server" + std::to_string(agents)), {"--store", *uri, "--workers", "0"});
    std::vector<std::unique_ptr<qsearch::testing::AgentProcess>> nodes;
    for (int a = 0; a < agents; ++a) {
      nodes.push_back(std::make_unique<qsearch::testing::AgentProcess>(
          Dir("agent" + std::to_string(agents) + "_" + std::to_string(a)), *uri));
    }
    bool ok = server.ok();
    for (const auto& n : nodes) ok = ok && n->ok();
    const double rate = ok ? Run(server, jobs, "pg") : -1;
    std::printf("| PostgreSQL, one API server, %d agent%s x 1 worker | %.1f |\n", agents, agents == 1 ? "" : "s", rate);
    std::fflush(stdout);
  }
  return 0;
}
