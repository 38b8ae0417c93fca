// Service latency: CreateSearchJob and GetSearchJob p50 / p99 with 32 concurrent clients
// (one channel each) on loopback, against a real qsearch-server started with
// --workers 0, so the figures are the API's own (spec check, SQLite write/read, gRPC) and
// no training competes for the cores.
// Run: build/bench/service_bench [clients] [calls per client] [server binary]
// (a third argument benchmarks another build of qsearch-server, for before/after ratios)
#include <algorithm>
#include <chrono>
#include <mutex>
#include <cstdio>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "server/testing/server_process.h"

namespace {

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  const int clients = argc > 1 ? std::stoi(argv[1]) : 32;
  const int calls = argc > 2 ? std::stoi(argv[2]) : 50;
  const auto dir = std::filesystem::temp_directory_path() / ("qsearch_service_bench_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const std::string binary = argc > 3 ? argv[3] : QSEARCH_SERVER_BIN;
  qsearch::testing::ServerProcess server(dir.string(), {"--workers", "0", "--max-queued-per-tenant", "1000000"}, {},
                                         /*test_defaults=*/true, binary);
  if (!server.ok()) {
    std::fprintf(stderr, "service_bench: the server did not start\n");
    return 1;
  }
  qsearch::v1::JobSpec spec;
  spec.set_model("lenet5");
  spec.mutable_dataset()->set_kind("fashion_mnist");
  spec.mutable_budget()->set_average_weight_bits(3);
  spec.mutable_qpl()->set_activation_bits(4);

  std::vector<std::vector<double>> create_ms(clients), get_ms(clients);
  std::vector<std::thread> threads;
  int errors = 0;
  std::mutex mu;
  const auto t0 = std::chrono::steady_clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      qsearch::client::ClientOptions o;
      o.server = server.address();
      auto client = qsearch::client::QsearchClient::Connect(o).value();
      (void)client->List(qsearch::v1::JOB_STATE_UNSPECIFIED, 1, "");  // connect before timing
      for (int i = 0; i < calls; ++i) {
        auto a = std::chrono::steady_clock::now();
        auto job = client->Create(spec, "b-" + std::to_string(c) + "-" + std::to_string(i));
        auto b = std::chrono::steady_clock::now();
        if (!job.ok()) {
          std::lock_guard<std::mutex> l(mu);
          ++errors;
          continue;
        }
        auto got = client->Get(job->name());
        auto d = std::chrono::steady_clock::now();
        if (!got.ok()) {
          std::lock_guard<std::mutex> l(mu);
          ++errors;
        }
        create_ms[c].push_back(std::chrono::duration<double, std::milli>(b - a).count());
        get_ms[c].push_back(std::chrono::duration<double, std::milli>(d - b).count());
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<double> create, get;
  for (int c = 0; c < clients; ++c) {
    create.insert(create.end(), create_ms[c].begin(), create_ms[c].end());
    get.insert(get.end(), get_ms[c].begin(), get_ms[c].end());
  }
  std::printf("%d clients x %d calls, %d errors, %.1f s wall, %.0f create+get pairs/s\n", clients, calls, errors, wall,
              static_cast<double>(create.size()) / wall);
  std::printf("CreateSearchJob  p50 %7.2f ms   p99 %7.2f ms\n", Percentile(create, 0.5), Percentile(create, 0.99));
  std::printf("GetSearchJob     p50 %7.2f ms   p99 %7.2f ms\n", Percentile(get, 0.5), Percentile(get, 0.99));
  server.Stop(SIGTERM);
  std::filesystem::remove_all(dir);
  return errors == 0 ? 0 : 1;
}
