// qsearch-worker: runs one search job from a JSON JobSpec file and writes its artifacts
// (common/artifacts.h) to a directory. The server spawns this same binary per job and
// reads it over a typed channel (--channel-fd: length-prefixed qsearch.internal.
// WorkerMessage frames: events, the result, the final status with its canonical code);
// stdout and stderr are then only logs. Run by hand, it prints progress lines.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/cli.h"
#include "common/frame_io.h"
#include "common/tensor_heap.h"
#include "qsearch/internal/worker.pb.h"
#include "search/data.h"
#include "search/device.h"
#include "search/job.h"
#include "search/progress.h"
#include "search/sandbox.h"
#include "search/script_model.h"
#include "search/spec.h"

namespace {

std::atomic<bool> g_cancel{false};
void OnSignal(int) { g_cancel.store(true); }

// The process's exit code for a job's outcome: 0, 3 when cancelled, else 1.
int ExitCode(const absl::Status& status) {
  if (status.ok()) return 0;
  return status.code() == absl::StatusCode::kCancelled ? 3 : 1;
}

// Where the job's outcome goes: the server's channel, or this terminal. Thread-safe: the
// heartbeat thread writes frames too.
class Reporter {
 public:
  explicit Reporter(int channel_fd) : fd_(channel_fd) {}

  // Every `period`, a heartbeat when the job made progress since the last one.
  void StartHeartbeats(std::chrono::milliseconds period) {
    if (fd_ < 0) return;
    heartbeats_ = std::thread([this, period] {
      std::uint64_t last = qsearch::search::Ticks();
      std::unique_lock<std::mutex> lock(stop_mu_);
      while (!stop_cv_.wait_for(lock, period, [this] { return stopping_; })) {
        const std::uint64_t now = qsearch::search::Ticks();
        if (now == last) continue;
        last = now;
        qsearch::internal::WorkerMessage m;
        m.mutable_heartbeat()->set_ticks(now);
        Send(m);
      }
    });
  }
  ~Reporter() { StopHeartbeats(); }

  void Event(const qsearch::v1::JobEvent& e) {
    if (fd_ < 0) {
      std::printf("%s\n", absl::StrFormat("[%6.1fs] %-15s epoch %-3d step %-6d loss %-8.4f acc %6.2f%%  eta %5.0fs  %s",
                                          e.elapsed_seconds(), qsearch::v1::Phase_Name(e.phase()), e.epoch(), e.step(),
                                          e.loss(), e.accuracy(), e.eta_seconds(), e.message())
                              .c_str());
      std::fflush(stdout);
      return;
    }
    qsearch::internal::WorkerMessage m;
    *m.mutable_event() = e;
    Send(m);
  }

  // The job's end: the result (when it succeeded) and the status. Returns the exit code.
  int Finish(const absl::StatusOr<qsearch::v1::JobResult>& result) {
    StopHeartbeats();
    const absl::Status status = result.status();
    if (fd_ >= 0) {
      qsearch::internal::WorkerMessage m;
      if (result.ok()) {
        *m.mutable_result() = *result;
        Send(m);
      }
      m.mutable_status()->set_code(static_cast<int>(status.code()));
      m.mutable_status()->set_message(std::string(status.message()));
      Send(m);
    }
    if (!status.ok()) {
      std::cerr << "qsearch-worker: " << status.ToString() << "\n";
      return ExitCode(status);
    }
    if (fd_ < 0) {
      std::printf("float accuracy %.2f%%, quantized accuracy %.2f%%, average weight bits %.3f\n",
                  result->float_accuracy(), result->quantized_accuracy(),
                  result->policy().cost().average_weight_bits());
    }
    return 0;
  }

 private:
  void Send(const qsearch::internal::WorkerMessage& m) {
    std::lock_guard<std::mutex> lock(send_mu_);
    if (absl::Status s = qsearch::WriteFrame(fd_, m); !s.ok()) {
      std::cerr << "qsearch-worker: the server's channel: " << s << "\n";
    }
  }
  void StopHeartbeats() {
    {
      std::lock_guard<std::mutex> lock(stop_mu_);
      stopping_ = true;
    }
    stop_cv_.notify_all();
    if (heartbeats_.joinable()) heartbeats_.join();
  }

  int fd_;
  std::mutex send_mu_;
  std::thread heartbeats_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
};

// The free port rank 0's rendezvous will listen on, when the job's processes share the
// node's network (no sandbox): the kernel's pick, released just before use.
absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("finding a free loopback port: ", std::strerror(errno)));
  return static_cast<int>(ntohs(a.sin_port));
}

// Starts ranks 1..world-1 of a data-parallel job: this binary again, with the same spec,
// out directory and limits, and its rank. Each dies with this process (PDEATHSIG), so a
// rank 0 that ends, is killed or is cancelled takes the others with it.
absl::StatusOr<std::vector<pid_t>> StartPeers(int world, int port, const std::vector<std::string>& common) {
  std::vector<pid_t> pids;
  for (int rank = 1; rank < world; ++rank) {
    std::vector<std::string> args = {"qsearch-worker"};
    args.insert(args.end(), common.begin(), common.end());
    args.insert(args.end(), {"--rank", std::to_string(rank), "--rendezvous-port", std::to_string(port)});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) return absl::ResourceExhaustedError(absl::StrCat("starting rank ", rank, ": ", std::strerror(errno)));
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  return pids;
}

// Waits up to `limit` for the other ranks to exit (after rank 0 succeeded they are
// finishing the same job); any left are killed when this process exits.
void WaitForPeers(std::vector<pid_t> pids, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pids.empty() && std::chrono::steady_clock::now() < deadline) {
    for (auto it = pids.begin(); it != pids.end();) {
      int status = 0;
      it = waitpid(*it, &status, WNOHANG) == 0 ? it + 1 : pids.erase(it);
    }
    if (!pids.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// What a job may read besides the system: its data set and its model.
std::vector<std::string> InputsOf(const qsearch::v1::JobSpec& spec) {
  std::vector<std::string> paths;
  const std::string& data = spec.dataset().path();
  paths.push_back(data.empty() ? qsearch::search::kDefaultFashionMnistDir : data);
  if (!spec.model_path().empty()) paths.push_back(spec.model_path());
  return paths;
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  std::string spec_path, out_dir, device = "cpu";
  int threads = 0, channel_fd = -1, rank = 0, rendezvous_port = 0;
  bool resume = false, sandbox = false, float64 = false;
  std::vector<std::string> check_models;
  std::int64_t memory_mb = 0, cpu_seconds = 0, max_file_mb = 0;
  po::options_description desc("qsearch-worker: run one mixed-precision search job");
  desc.add_options()("help,h", "show this help")(
      "spec", po::value(&spec_path), "job spec as JSON (qsearch.v1.JobSpec); unset fields take their defaults")(
      "check-model", po::value(&check_models)->multitoken(),
      "only check TorchScript model files the way a job does before running one (no load-time code, vetted "
      "ops, one input): prints a line per file, exits 1 if any is refused")(
      "out", po::value(&out_dir)->default_value("."), "directory for the artifacts and the checkpoint")(
      "threads", po::value(&threads)->default_value(0), "intra-op threads (0: all cores)")(
      "resume", po::bool_switch(&resume), "continue from OUT/checkpoint.pt when it exists (written every epoch)")(
      "device", po::value(&device)->default_value("cpu"),
      "device to run on: cpu, or cuda:N with a CUDA LibTorch; for a job of world_size W, one device for all its "
      "processes or W comma-separated, one each (cuda:0,cuda:1)")(
      "channel-fd", po::value(&channel_fd)->default_value(-1),
      "report to the server over this file descriptor (length-prefixed WorkerMessage frames) instead of printing")(
      "sandbox", po::bool_switch(&sandbox),
      "confine this process before reading the job's inputs: read only its data and model, write only OUT, no "
      "network, no signals or ptrace to other processes (Landlock, seccomp, namespaces; see search/sandbox.h)")(
      "memory-mb", po::value(&memory_mb)->default_value(0), "with --sandbox: address-space limit (0: none)")(
      "cpu-seconds", po::value(&cpu_seconds)->default_value(0), "with --sandbox: CPU time limit (0: none)")(
      "max-file-mb", po::value(&max_file_mb)->default_value(0), "with --sandbox: largest file it may write (0: none)")(
      "float64", po::bool_switch(&float64),
      "testing: run the whole job in float64, so that two runs differ by rounding near 1e-16 rather than "
      "float32's 1e-7 (how data_parallel_test shows that two processes choose one process's policy); about "
      "3x slower, and the exported model is float64 too")(
      "rank", po::value(&rank)->default_value(0),
      "internal: this process's rank in a job with world_size > 1 (rank 0, the one started for the job, starts "
      "the others)")(
      "rendezvous-port", po::value(&rendezvous_port)->default_value(0),
      "internal: with --rank, the 127.0.0.1 port of rank 0's rendezvous");
  po::variables_map vm;
  if (auto exit_code = qsearch::ParseCommandLine(argc, argv, desc, vm, "qsearch-worker")) return *exit_code;

  if (!check_models.empty()) {
    int refused = 0;
    for (const auto& path : check_models) {
      const absl::Status s = qsearch::search::CheckScriptModel(path);
      std::printf("%s %s%s\n", s.ok() ? "ok" : "refused", path.c_str(),
                  s.ok() ? "" : absl::StrCat(": ", s.message()).c_str());
      refused += s.ok() ? 0 : 1;
    }
    return refused > 0 ? 1 : 0;
  }
  if (spec_path.empty()) {
    std::cerr << "qsearch-worker: --spec is required\n";
    return 2;
  }
  qsearch::KeepFreedTensorMemory();  // best effort: without it the job runs, slower
  Reporter reporter(channel_fd);
  const auto refuse = [&](absl::Status s) { return reporter.Finish(s); };
  // The name only: whether the GPU is usable is asked once confined (the CUDA driver starts
  // threads, and the sandbox must come first), when the job starts.
  const auto on = qsearch::search::ParseDevices(device);
  if (!on.ok()) return refuse(on.status());
  const bool gpu = on->front().is_cuda();
  if (gpu) setenv("CUDA_CACHE_DISABLE", "1", 1);  // no kernel cache in the home directory
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return refuse(absl::InternalError(absl::StrCat("cannot create output directory ", out_dir, ": ", ec.message())));
  std::ifstream in(spec_path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return refuse(absl::InvalidArgumentError(absl::StrCat("cannot read spec file ", spec_path)));
  qsearch::v1::JobSpec spec;
  if (auto s = google::protobuf::util::JsonStringToMessage(text.str(), &spec); !s.ok()) {
    return refuse(absl::InvalidArgumentError(absl::StrCat(spec_path, " is not a valid JobSpec: ", s.ToString())));
  }

  // A data-parallel job: rank 0 gives the job a loopback network of its own (sandboxed) or
  // finds a free port, then starts the other ranks, single-threaded still. A spec the job
  // would refuse starts none.
  const int world = std::max(1, spec.world_size());
  std::vector<pid_t> peers;
  if (world > 1 && rank == 0) {
    if (auto s = qsearch::search::ValidateSpec(qsearch::search::WithDefaults(spec)); !s.ok()) return refuse(s);
    if (sandbox) {
      if (auto s = qsearch::search::EnterPrivateNetwork(); !s.ok()) return refuse(s);
      rendezvous_port = 29500;  // the namespace is the job's own: any port is free
    } else {
      auto port = FreeLoopbackPort();
      if (!port.ok()) return refuse(port.status());
      rendezvous_port = *port;
    }
    std::vector<std::string> common = {"--spec", spec_path, "--out", out_dir, "--threads", std::to_string(threads),
                                       "--memory-mb", std::to_string(memory_mb), "--cpu-seconds",
                                       std::to_string(cpu_seconds), "--max-file-mb", std::to_string(max_file_mb), "--device", device};
    if (channel_fd >= 0) fcntl(channel_fd, F_SETFD, FD_CLOEXEC);  // the server's channel is rank 0's
    if (resume) common.push_back("--resume");
    if (sandbox) common.push_back("--sandbox");
    if (float64) common.push_back("--float64");
    auto started = StartPeers(world, rendezvous_port, common);
    if (!started.ok()) return refuse(started.status());
    peers = *started;
  }

  if (sandbox) {
    // Before any thread starts and before anything a user sent is read.
    qsearch::search::SandboxOptions box;
    box.read_paths = InputsOf(spec);
    if (rank == 0) {
      box.write_paths = {std::filesystem::absolute(out_dir).string()};
    } else {
      box.read_paths.push_back(std::filesystem::absolute(out_dir).string());  // rank 0's checkpoint
    }
    box.loopback_tcp = world > 1;
    box.gpu = gpu;
    box.memory_bytes = memory_mb << 20;
    box.cpu_seconds = cpu_seconds;
    box.max_file_bytes = max_file_mb << 20;
    auto entered = qsearch::search::EnterSandbox(box);
    if (!entered.ok()) return refuse(entered.status());
    std::cerr << "qsearch-worker: sandbox: " << entered->Describe() << "\n";
  }
  reporter.StartHeartbeats(std::chrono::seconds(2));

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  qsearch::search::JobOptions options;
  options.cancel = &g_cancel;
  options.out_dir = out_dir;
  options.resume = resume;
  options.threads = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  options.threads = std::max(1, options.threads / world);  // the job's cores, shared by its processes
  options.rank = rank;
  options.float64 = float64;
  options.device = device;
  options.rendezvous_port = rendezvous_port;
  // Test-only fault switch: QSEARCH_WORKER_CRASH="SEED:N" aborts a job whose spec has this
  // seed after N events, as a crash inside LibTorch would; the supervisor tests use it.
  long crash_after = -1;
  if (const char* v = std::getenv("QSEARCH_WORKER_CRASH")) {
    unsigned long long seed = 0;
    long n = 0;
    if (std::sscanf(v, "%llu:%ld", &seed, &n) == 2 && seed == spec.seed()) crash_after = n;
  }
  long emitted = 0;
  options.on_event = [&](const qsearch::v1::JobEvent& e) {
    reporter.Event(e);
    if (crash_after >= 0 && ++emitted >= crash_after) std::abort();
  };
  if (rank > 0) options.on_event = nullptr;  // rank 0 reports
  const absl::StatusOr<qsearch::v1::JobResult> result = qsearch::search::RunSearchJob(spec, options);
  if (rank > 0) return ExitCode(result.status());
  // The others finish the job's last collective with rank 0; on a failure they die with it.
  if (result.ok()) WaitForPeers(peers, std::chrono::seconds(60));
  return reporter.Finish(result);
}
