// qsearch-server: the SearchService over gRPC, with the embedded SQLite job store under
// --data-dir (or a PostgreSQL one shared by several servers, --store) and jobs run by
// qsearch-worker child processes.
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include <boost/program_options.hpp>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "common/cli.h"
#include "absl/strings/str_split.h"
#include "server/job_store.h"
#include "server/node_options.h"
#include "server/scheduler.h"
#include "server/search_core.h"
#include "search/sandbox.h"
#include "server/service.h"

namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  std::string listen, data_dir, store_at, tls_cert, tls_key, auth_tokens;
  int max_queued = 100, max_jobs = 1000;
  std::int64_t max_upload = std::int64_t{1} << 30, max_tenant_upload = std::int64_t{20} << 30;
  double upload_expiry_hours = 24;
  std::string data_roots;
  qsearch::server::NodeFlags node;
  po::options_description desc(
      "qsearch-server: mixed-precision quantization search service (gRPC qsearch.v1.SearchService)");
  desc.add_options()("help,h", "show this help")(
      "listen", po::value(&listen)->default_value("127.0.0.1:50051"),
      "address to serve on, host:port (port 0 picks a free one; the chosen address is printed)")(
      "data-dir", po::value(&data_dir)->default_value("qsearch-data"),
      "where job directories and uploads live, and the embedded job store (jobs.db) unless --store names "
      "another; with a PostgreSQL store it is this server's own scratch and cache (uploads, checkpoints and "
      "artifacts live in the store)")(
      "store", po::value(&store_at),
      "the job store: a postgresql://user@host:port/db URI (several servers and qsearch-agent nodes may share it; "
      "jobs are claimed under leases) or an SQLite file (default: <data-dir>/jobs.db)")(
      "tls-cert", po::value(&tls_cert), "PEM certificate chain; with --tls-key serves TLS")(
      "tls-key", po::value(&tls_key), "PEM private key")(
      "auth-tokens", po::value(&auth_tokens),
      "file of 'token tenant' lines; callers must send 'authorization: Bearer <token>' and see only "
      "their tenant's jobs (without it everyone is tenant 'default')")(
      "max-upload-bytes", po::value(&max_upload)->default_value(max_upload), "largest accepted upload")(
      "max-queued-per-tenant", po::value(&max_queued)->default_value(100),
      "queued jobs a tenant may have before CreateSearchJob answers RESOURCE_EXHAUSTED")(
      "max-jobs-per-tenant", po::value(&max_jobs)->default_value(1000), "stored jobs (any state) a tenant may have")(
      "max-upload-bytes-per-tenant", po::value(&max_tenant_upload)->default_value(max_tenant_upload),
      "bytes of uploads (finished and partial) a tenant may hold")(
      "data-roots", po::value(&data_roots),
      "comma-separated server directories tenants may name in dataset.path / model_path; otherwise only uploads")(
      "upload-expiry-hours", po::value(&upload_expiry_hours)->default_value(upload_expiry_hours),
      "uploads in progress that receive nothing this long are removed");
  qsearch::server::AddNodeFlags(desc, node,
                                "jobs run at the same time, one worker process each (0: accept and store jobs, run "
                                "none; qsearch-agent nodes run them)");
  po::variables_map vm;
  if (auto exit_code = qsearch::ParseCommandLine(argc, argv, desc, vm, "qsearch-server")) return *exit_code;
  if (tls_cert.empty() != tls_key.empty()) {
    std::cerr << "qsearch-server: --tls-cert and --tls-key go together\n";
    return 2;
  }
  auto sopts = qsearch::server::SchedulerOptionsFrom(node, data_dir, argv[0]);
  if (!sopts.ok()) {
    std::cerr << "qsearch-server: " << sopts.status().message() << "\n";
    return absl::IsInvalidArgument(sopts.status()) ? 2 : 1;
  }

  // SIGTERM / SIGINT are taken by a thread of our own (sigwait), so they must be blocked
  // before any other thread starts.
  const sigset_t signals = qsearch::server::BlockStopSignals();

  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec) {
    std::cerr << "qsearch-server: cannot create --data-dir " << data_dir << ": " << ec.message() << "\n";
    return 1;
  }
  std::map<std::string, std::string> tokens;
  if (!auth_tokens.empty()) {
    auto t = qsearch::server::ReadTokenFile(auth_tokens);
    if (!t.ok()) {
      std::cerr << "qsearch-server: " << t.status().message() << "\n";
      return 1;
    }
    tokens = *t;
  }
  // The hub and the dispatcher's pointer outlive the store: its listener thread wakes
  // them until it stops.
  qsearch::server::EventHub hub;
  absl::Mutex scheduler_mu;
  qsearch::server::Scheduler* scheduler_ptr = nullptr;
  auto store = qsearch::server::JobStore::Open(store_at.empty() ? (fs::path(data_dir) / "jobs.db").string() : store_at);
  absl::Status store_ready = store.status();
  if (store_ready.ok()) {
    // Events another node writes wake this server's Watch streams; a job queued through
    // another server wakes its dispatcher.
    store_ready = (*store)->Subscribe([&](const std::string& job) {
      {
        absl::MutexLock lock(&scheduler_mu);
        if (scheduler_ptr != nullptr) scheduler_ptr->Wake();
      }
      if (job.empty()) {
        hub.NotifyAll();
      } else {
        hub.Notify(job);
      }
    });
  }
  if (!store_ready.ok()) {
    std::cerr << "qsearch-server: " << store_ready.message() << "\n";
    return 1;
  }
  qsearch::server::Scheduler scheduler(store->get(), &hub, *sopts);
  {
    absl::MutexLock lock(&scheduler_mu);
    scheduler_ptr = &scheduler;
  }
  qsearch::server::CoreOptions copts;
  copts.data_dir = data_dir;
  copts.max_upload_bytes = max_upload;
  copts.max_queued_per_tenant = max_queued;
  copts.max_jobs_per_tenant = max_jobs;
  copts.max_upload_bytes_per_tenant = max_tenant_upload;
  copts.data_roots = absl::StrSplit(data_roots, ',', absl::SkipEmpty());
  qsearch::server::SearchCore core(store->get(), &scheduler, &hub, copts);
  qsearch::server::SearchServiceImpl service(&core, tokens);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({ReadFile(tls_key), ReadFile(tls_cert)});
    creds = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, creds, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(8 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "qsearch-server: cannot listen on " << listen << "\n";
    return 1;
  }
  if (auto s = scheduler.Start(); !s.ok()) {
    std::cerr << "qsearch-server: " << s.message() << "\n";
    server->Shutdown();
    return 1;
  }
  // grpc.health.v1 answers for the whole server ("") and, once the scheduler runs, for the
  // search service by name, which Kubernetes readiness probes ask for.
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService(); health != nullptr) {
    health->SetServingStatus(qsearch::v1::SearchService::service_full_name(), true);
  }
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::printf("qsearch-server listening on %s:%d (data dir %s, %d worker%s, worker binary %s)\n", host.c_str(), port,
              data_dir.c_str(), sopts->workers, sopts->workers == 1 ? "" : "s", sopts->worker_binary.c_str());
  std::fflush(stdout);

  // Abandoned uploads go after --upload-expiry-hours, checked every few minutes.
  std::mutex janitor_mu;
  std::condition_variable janitor_cv;
  bool stopping = false;
  std::thread janitor([&] {
    const auto max_age = std::chrono::seconds(static_cast<std::int64_t>(upload_expiry_hours * 3600));
    std::unique_lock<std::mutex> lock(janitor_mu);
    do {
      lock.unlock();
      core.ExpireAbandonedUploads(max_age);
      lock.lock();
    } while (!janitor_cv.wait_for(lock, std::chrono::minutes(5), [&] { return stopping; }));
  });

  int sig = 0;
  sigwait(&signals, &sig);
  {
    std::lock_guard<std::mutex> lock(janitor_mu);
    stopping = true;
  }
  janitor_cv.notify_all();
  janitor.join();
  std::printf("qsearch-server: %s, shutting down; running jobs keep their checkpoints and resume at the next start\n",
              sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  // Probes see NOT_SERVING at once; workers stop at their next step (their last epoch
  // checkpoint stays) before the RPC server drains, so no job finishes or starts after
  // the signal; open Watch streams end and clients reconnect to the next server.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health != nullptr) health->Shutdown();
  scheduler.Shutdown();
  {
    absl::MutexLock lock(&scheduler_mu);
    scheduler_ptr = nullptr;
  }
  hub.NotifyAll();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
