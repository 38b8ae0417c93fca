// A stand-in for qsearch-worker in the scheduler's tests: speaks the worker channel
// (worker_process.h) and acts out what its spec's `model` names, in milliseconds and
// without LibTorch:
//   ok        three events, policy.json in --out, the result, status OK
//   fail      one event, then status INVALID_ARGUMENT "bad archive: label 7 out of range"
//   crash     one event, then abort()
//   silent    exits 0 without a status
//   garbage   a frame header promising 4 GiB
//   hang      one event, then waits; SIGTERM reports CANCELLED (as the worker does)
//   stubborn  one event, then ignores SIGTERM
// It appends its argv to --out/../argv.log, so tests can see how it was started.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "common/frame_io.h"
#include "qsearch/internal/worker.pb.h"

namespace {

std::atomic<bool> g_term{false};
void OnTerm(int) { g_term = true; }

void Send(int fd, const qsearch::internal::WorkerMessage& m) { (void)qsearch::WriteFrame(fd, m); }

void Event(int fd, std::int64_t sequence, const std::string& message) {
  qsearch::internal::WorkerMessage m;
  m.mutable_event()->set_sequence(sequence);
  m.mutable_event()->set_phase(qsearch::v1::PHASE_PRETRAIN);
  m.mutable_event()->set_message(message);
  Send(fd, m);
}

void Status(int fd, absl::StatusCode code, const std::string& message) {
  qsearch::internal::WorkerMessage m;
  m.mutable_status()->set_code(static_cast<int>(code));
  m.mutable_status()->set_message(message);
  Send(fd, m);
}

}  // namespace

int main(int argc, char** argv) {
  std::string spec_path, out;
  int fd = -1;
  std::string all;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    all += a + " ";
    if (a == "--spec" && i + 1 < argc) spec_path = argv[i + 1];
    if (a == "--out" && i + 1 < argc) out = argv[i + 1];
    if (a == "--channel-fd" && i + 1 < argc) fd = std::atoi(argv[i + 1]);
  }
  std::ofstream(out + "/../argv.log", std::ios::app) << all << "\n";
  std::ifstream in(spec_path);
  std::stringstream text;
  text << in.rdbuf();
  qsearch::v1::JobSpec spec;
  if (!google::protobuf::util::JsonStringToMessage(text.str(), &spec).ok() || fd < 0) return 2;
  const std::string act = spec.model();
  std::signal(SIGTERM, act == "stubborn" ? SIG_IGN : OnTerm);
  if (act == "ok") {
    for (int i = 1; i <= 3; ++i) Event(fd, i, "step " + std::to_string(i));
    std::ofstream(out + "/policy.json") << "{\"model\": \"ok\"}\n";
    qsearch::internal::WorkerMessage m;
    m.mutable_result()->mutable_policy()->set_model("ok");
    m.mutable_result()->set_quantized_accuracy(42.5);
    Send(fd, m);
    Status(fd, absl::StatusCode::kOk, "");
    return 0;
  }
  Event(fd, 1, "started");
  if (act == "fail") {
    Status(fd, absl::StatusCode::kInvalidArgument, "bad archive: label 7 out of range");
    return 1;
  }
  if (act == "crash") std::abort();
  if (act == "silent") return 0;
  if (act == "garbage") {
    const char header[4] = {'\xff', '\xff', '\xff', '\xff'};
    (void)!write(fd, header, 4);
    std::this_thread::sleep_for(std::chrono::seconds(30));
    return 0;
  }
  // hang, stubborn: until told to stop (bounded: a lost test must not leave it forever).
  for (int i = 0; i < 600 && !g_term; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  Status(fd, absl::StatusCode::kCancelled, "job cancelled");
  return 3;
}
