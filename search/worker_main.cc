// qsearch-worker: runs one search job from a JSON JobSpec file and writes its outputs
// (policy.json, result.json, config_list.json, quantized.pt) to a directory, printing progress. The
// server spawns this same binary per job.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <ATen/Parallel.h>
#include <boost/program_options.hpp>
#include <google/protobuf/util/json_util.h>

#include "common/cli.h"
#include "absl/strings/str_format.h"
#include "search/job.h"

namespace {

std::atomic<bool> g_cancel{false};
void OnSignal(int) { g_cancel.store(true); }

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  std::string spec_path, out_dir;
  int threads = 0;
  bool resume = false;
  std::string events = "text";
  std::string device = "cpu";
  po::options_description desc("qsearch-worker: run one mixed-precision search job");
  desc.add_options()("help,h", "show this help")(
      "spec", po::value(&spec_path)->required(), "job spec as JSON (qsearch.v1.JobSpec)")(
      "out", po::value(&out_dir)->default_value("."), "directory for policy.json, result.json, config_list.json, quantized.pt and the checkpoint")(
      "threads", po::value(&threads)->default_value(0), "intra-op threads (0: the spec's, else all cores)")(
      "resume", po::bool_switch(&resume), "continue from OUT/checkpoint.pt when it exists (written every epoch)")(
      "device", po::value(&device)->default_value("cpu"), "device to run on (this build: cpu)")(
      "events", po::value(&events)->default_value("text"),
      "progress format on stdout: text (one line per event) or jsonl (one JobEvent as JSON per line, for the server)");
  po::variables_map vm;
  if (auto exit_code = qsearch::ParseCommandLine(argc, argv, desc, vm, "qsearch-worker")) return *exit_code;

  if (device != "cpu") {
    // The search engine keeps every tensor on the CPU; a GPU build would move the model and
    // batches to `device`. Refuse rather than run somewhere else than asked.
    std::cerr << "qsearch-worker: INVALID_ARGUMENT: device '" << device
              << "' is not supported: this build runs searches on the CPU only (use --devices cpu)\n";
    return 1;
  }
  if (events != "text" && events != "jsonl") {
    std::cerr << "qsearch-worker: --events must be text or jsonl\n";
    return 2;
  }
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    std::cerr << "qsearch-worker: cannot create output directory " << out_dir << ": " << ec.message() << "\n";
    return 2;
  }
  std::ifstream in(spec_path);
  if (!in) {
    std::cerr << "qsearch-worker: cannot read spec file " << spec_path << "\n";
    return 2;
  }
  std::stringstream text;
  text << in.rdbuf();
  qsearch::v1::JobSpec spec;
  if (auto s = google::protobuf::util::JsonStringToMessage(text.str(), &spec); !s.ok()) {
    std::cerr << "qsearch-worker: " << spec_path << " is not a valid JobSpec: " << s.ToString() << "\n";
    return 2;
  }
  if (threads > 0) spec.set_threads(threads);
  if (spec.threads() <= 0) spec.set_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  at::set_num_threads(spec.threads());

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  qsearch::search::JobOptions options;
  options.cancel = &g_cancel;
  options.out_dir = out_dir;
  options.resume = resume;
  // Test-only fault switch: QSEARCH_WORKER_CRASH="SEED:N" aborts a job whose spec has this
  // seed after N events, as a crash inside LibTorch would; the supervisor tests use it.
  long crash_after = -1;
  if (const char* v = std::getenv("QSEARCH_WORKER_CRASH")) {
    unsigned long long seed = 0;
    long n = 0;
    if (std::sscanf(v, "%llu:%ld", &seed, &n) == 2 && seed == spec.seed()) crash_after = n;
  }
  long emitted = 0;
  const bool jsonl = events == "jsonl";
  options.on_event = [&](const qsearch::v1::JobEvent& e) {
    if (jsonl) {
      std::string line;
      (void)google::protobuf::util::MessageToJsonString(e, &line);
      std::printf("%s\n", line.c_str());
    } else {
      std::printf("%s\n", absl::StrFormat("[%6.1fs] %-15s epoch %-3d step %-6d loss %-8.4f acc %6.2f%%  eta %5.0fs  %s",
                                          e.elapsed_seconds(), qsearch::v1::Phase_Name(e.phase()), e.epoch(),
                                          e.step(), e.loss(), e.accuracy(), e.eta_seconds(), e.message())
                              .c_str());
    }
    std::fflush(stdout);
    if (crash_after >= 0 && ++emitted >= crash_after) std::abort();
  };
  auto result = qsearch::search::RunSearchJob(spec, options);
  if (!result.ok()) {
    std::cerr << "qsearch-worker: " << result.status().ToString() << "\n";
    return result.status().code() == absl::StatusCode::kCancelled ? 3 : 1;
  }
  if (jsonl) return 0;  // the server reads OUT/result.json
  std::printf("float accuracy %.2f%%, quantized accuracy %.2f%%, average weight bits %.3f\n",
              result->float_accuracy(), result->quantized_accuracy(),
              result->policy().cost().average_weight_bits());
  return 0;
}
