// The service end to end: a real qsearch-server process on 127.0.0.1 (ephemeral port),
// real qsearch-worker processes, the client library. Tiny models and sliced data keep
// each job to seconds; every wait is bounded.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "client/client.h"
#include "common/sha256.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "search/data.h"
#include "server/data_layout.h"
#include "server/job_store.h"
#include "tests/client/browser_check.h"
#include "server/testing/server_process.h"
#include "tests/test_util.h"
#include "tests/testing/postgres.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch {
namespace {

using ::testing::HasSubstr;
using client::ClientOptions;
using client::QsearchClient;
using testing::AgentProcess;
using testing::ServerProcess;
namespace fs = std::filesystem;
using ::qsearch::testing::FreshDir;

v1::JobSpec TinySpec(int epochs = 1) { return ::qsearch::testing::TinySpec("mlp", epochs); }

std::unique_ptr<QsearchClient> Connect(const ServerProcess& server, const std::string& token = "") {
  ClientOptions o;
  o.server = server.address();
  o.token = token;
  return QsearchClient::Connect(o).value();
}

// A two-layer TorchScript model (conv c1, linear fc) for Fashion-MNIST, saved at `path`.
void SaveTinyScriptNet(const std::string& path) {
  torch::manual_seed(1);
  torch::jit::Module net("Net");
  net.register_parameter("c1", torch::randn({4, 1, 3, 3}) * 0.3, false);
  net.register_parameter("fc", torch::randn({10, 4 * 14 * 14}) * 0.02, false);
  net.define(R"JIT(
def forward(self, x):
    h = torch.max_pool2d(torch.relu(torch.conv2d(x, self.c1, None, [1, 1], [1, 1])), [2, 2])
    return torch.linear(torch.flatten(h, 1), self.fc, None)
)JIT");
  net.save(path);
}

bool Consecutive(const std::vector<v1::JobEvent>& events) {
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i].sequence() != static_cast<std::int64_t>(i) + 1) return false;
  }
  return true;
}

// Polls until `pred(job)` or the deadline; returns the last job seen.
v1::SearchJob WaitFor(QsearchClient& c, const std::string& name, const std::function<bool(const v1::SearchJob&)>& pred,
                      double seconds) {
  v1::SearchJob job;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    auto j = c.Get(name);
    if (j.ok()) {
      job = *j;
      if (pred(job)) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return job;
}

TEST(ServiceTest, SubmitWatchSucceedsWithinBudgetAndDownloadsMatch) {
  ServerProcess server(FreshDir("svc_basic"));
  ASSERT_TRUE(server.ok());
  auto c = Connect(server);
  ASSERT_OK_AND_ASSIGN(bool healthy, c->Healthy());
  EXPECT_TRUE(healthy) << "grpc.health.v1 answers SERVING";
  {
    // Server reflection lists the services, as grpcurl and similar tools ask.
    auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(
        grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto stream = stub->ServerReflectionInfo(&ctx);
    grpc::reflection::v1alpha::ServerReflectionRequest req;
    req.set_list_services("");
    ASSERT_TRUE(stream->Write(req));
    stream->WritesDone();
    grpc::reflection::v1alpha::ServerReflectionResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    std::set<std::string> services;
    for (const auto& sv : resp.list_services_response().service()) services.insert(sv.name());
    EXPECT_TRUE(services.count("qsearch.v1.SearchService"));
    EXPECT_TRUE(services.count("grpc.health.v1.Health"));
    EXPECT_TRUE(stream->Finish().ok());
  }
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, c->Create(TinySpec(), "req-basic"));
  EXPECT_TRUE(job.state() == v1::QUEUED || job.state() == v1::RUNNING) << v1::JobState_Name(job.state());
  ASSERT_OK_AND_ASSIGN(v1::SearchJob again, c->Create(TinySpec(), "req-basic"));
  EXPECT_EQ(again.name(), job.name()) << "same request_id, same job";

  std::vector<v1::JobEvent> events;
  int snapshots = 0;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob done, c->Watch(job.name(), 0, [&](const v1::SearchJob&) { ++snapshots; },
                                                    [&](const v1::JobEvent& e) { events.push_back(e); }));
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  EXPECT_EQ(snapshots, 1);
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(Consecutive(events));
  EXPECT_EQ(events.back().phase(), v1::PHASE_DONE);
  bool saw_policy = false;
  for (const auto& e : events) saw_policy |= e.has_policy() && e.phase() == v1::PHASE_QSS;
  EXPECT_TRUE(saw_policy) << "events carry the evolving policy";

  ASSERT_OK_AND_ASSIGN(v1::Policy policy, c->GetPolicy(job.name()));
  EXPECT_LE(policy.cost().average_weight_bits(), 3.0 + 1e-9);
  EXPECT_GT(policy.quantized_accuracy(), 30);

  const std::string dir = FreshDir("svc_basic_dl");
  const std::string path = dir + "/q.pt";
  ASSERT_OK_AND_ASSIGN(std::string sha, c->Download(job.name(), "checkpoint", path));
  std::string recorded;
  for (const auto& a : done.artifacts()) {
    if (a.kind() == "checkpoint") recorded = a.sha256();
  }
  EXPECT_EQ(sha, recorded);
  EXPECT_EQ(Sha256File(path).value(), recorded);
  // A partial file resumes from its size and ends whole.
  fs::resize_file(path, fs::file_size(path) / 3);
  ASSERT_OK_AND_ASSIGN(std::string again_sha, c->Download(job.name(), "checkpoint", path));
  EXPECT_EQ(again_sha, recorded);
  // The HTML report, written by the qsearch CLI and laid out by Chromium: one weight and
  // one activation bar per layer of the job's policy, at the policy's bits; a curve per
  // training phase.
  {
    const std::string report = dir + "/report.html";
    const std::string cmd = absl::StrCat(QSEARCH_CLI_BIN, " --server ", server.address(), " report ", job.name(), " -o ",
                                         report, " > ", dir, "/report.out 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    ASSERT_OK_AND_ASSIGN(testing::RenderedReport r, testing::RenderInChromium(report, dir + "/chromium"));
    EXPECT_EQ(r.external_resources, 0);
    ASSERT_EQ(r.bars.size(), 2u * policy.layers_size());
    for (const auto& l : policy.layers()) {
      int weight = 0, activation = 0;
      for (const auto& b : r.bars) {
        if (b.layer != l.name()) continue;
        EXPECT_GT(b.height, 0) << l.name();
        if (b.part == "weight") {
          ++weight;
          EXPECT_EQ(b.bits, l.excluded() ? 32 : l.weight_bits()) << l.name();
          if (!l.excluded()) EXPECT_EQ(b.scheme, l.weight().scheme());
        } else {
          ++activation;
          EXPECT_EQ(b.bits, l.excluded() ? 32 : l.activation_bits()) << l.name();
        }
      }
      EXPECT_EQ(weight, 1) << l.name();
      EXPECT_EQ(activation, 1) << l.name();
    }
    std::set<std::string> phases;
    for (const auto& c : r.curves) phases.insert(c.phase);
    EXPECT_EQ(phases, (std::set<std::string>{"PHASE_PRETRAIN", "PHASE_QSS", "PHASE_QPL", "PHASE_FINETUNE"}));
  }
  // Watching a finished job replays its events and ends.
  std::vector<v1::JobEvent> replay;
  ASSERT_OK(c->Watch(job.name(), 3, nullptr, [&](const v1::JobEvent& e) { replay.push_back(e); }));
  ASSERT_EQ(replay.size(), events.size() - 3);
  EXPECT_EQ(replay.front().sequence(), 4);

  ASSERT_OK_AND_ASSIGN(auto list, c->List(v1::SUCCEEDED, 10, ""));
  ASSERT_EQ(list.jobs_size(), 1);
  ASSERT_OK(c->Delete(job.name()));
  EXPECT_EQ(c->Get(job.name()).status().code(), absl::StatusCode::kNotFound);
}

// SIGKILL: a crash. SIGTERM: an orderly stop (Kubernetes, docker stop). Either way the
// next server on the same data directory finishes the job.
class RestartTest : public ::testing::TestWithParam<int> {};

TEST_P(RestartTest, StoppedServerRestartsAndTheJobCompletesWithoutGaps) {
  const std::string data = FreshDir(GetParam() == SIGKILL ? "svc_kill" : "svc_term");
  std::string name;
  {
    ServerProcess server(data);
    ASSERT_TRUE(server.ok());
    auto c = Connect(server);
    v1::JobSpec spec = TinySpec(4);
    ASSERT_OK_AND_ASSIGN(v1::SearchJob job, c->Create(spec, "req-kill"));
    name = job.name();
    // Wait until the search phase has checkpointed an epoch, then kill -9.
    v1::SearchJob j = WaitFor(*c, name, [](const v1::SearchJob& j) {
      return j.last_event().phase() == v1::PHASE_QSS && j.last_event().epoch_end();
    }, 120);
    ASSERT_EQ(j.last_event().phase(), v1::PHASE_QSS);
    server.Stop(GetParam());
  }
  // The restarted server runs its workers with 2 threads, not 1: execution settings are
  // not part of the job, so the checkpoint still fits.
  ServerProcess server(data, {"--listen", "127.0.0.1:0", "--data-dir", data, "--worker", QSEARCH_WORKER_BIN,
                              "--threads-per-worker", "2"},
                       {}, /*test_defaults=*/false);
  ASSERT_TRUE(server.ok());
  auto c = Connect(server);
  std::vector<v1::JobEvent> events;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob done, c->Watch(name, 0, nullptr, [&](const v1::JobEvent& e) { events.push_back(e); }));
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  EXPECT_EQ(done.attempts(), 2);
  EXPECT_TRUE(done.result().resumed());
  EXPECT_TRUE(Consecutive(events));
  // Every epoch of every phase completed, none twice.
  std::set<std::pair<int, int>> epochs;
  for (const auto& e : events) {
    if (!e.epoch_end()) continue;
    EXPECT_TRUE(epochs.insert({e.phase(), e.epoch()}).second) << v1::Phase_Name(e.phase()) << " " << e.epoch();
  }
  EXPECT_EQ(epochs.size(), 16u);
}

INSTANTIATE_TEST_SUITE_P(KillOrTerm, RestartTest, ::testing::Values(SIGKILL, SIGTERM),
                         [](const auto& info) { return info.param == SIGKILL ? "Sigkill" : "Sigterm"; });

TEST(ServiceTest, CrashingWorkerFailsOnlyItsJob) {
  ServerProcess server(FreshDir("svc_crash"), {"--workers", "2"}, {"QSEARCH_WORKER_CRASH=666:3"});
  ASSERT_TRUE(server.ok());
  auto c = Connect(server);
  v1::JobSpec doomed = TinySpec();
  doomed.set_seed(666);
  ASSERT_OK_AND_ASSIGN(v1::SearchJob bad, c->Create(doomed, "bad"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob good, c->Create(TinySpec(), "good"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob bad_done, c->Watch(bad.name(), 0, nullptr, nullptr));
  EXPECT_EQ(bad_done.state(), v1::FAILED);
  EXPECT_THAT(bad_done.error_message(), HasSubstr("crashed (signal 6"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob good_done, c->Watch(good.name(), 0, nullptr, nullptr));
  EXPECT_EQ(good_done.state(), v1::SUCCEEDED) << good_done.error_message();
}

// A node bound to a GPU: the job runs there through the sandboxed worker where this build
// has CUDA and a GPU; elsewhere (Debian's CPU LibTorch) it FAILS with the reason and what
// to do, and the server goes on serving.
TEST(ServiceTest, AJobOnACudaDeviceRunsThereOrFailsSayingWhy) {
  ServerProcess server(FreshDir("svc_cuda"), {"--workers", "1", "--devices", "cuda:0"});
  ASSERT_TRUE(server.ok());
  auto c = Connect(server);
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, c->Create(TinySpec(), "on-gpu"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob done, c->Watch(job.name(), 0, nullptr, nullptr));
  if (torch::cuda::is_available()) {
    EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
    EXPECT_GT(done.result().quantized_accuracy(), 50);
  } else {
    EXPECT_EQ(done.state(), v1::FAILED);
    EXPECT_EQ(done.error_code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(done.error_message(), HasSubstr("cuda:0 cannot be used here"));
    EXPECT_THAT(done.error_message(), HasSubstr("built without CUDA"));
  }
  ASSERT_OK_AND_ASSIGN(v1::SearchJob again, c->Get(job.name()));
  EXPECT_EQ(again.state(), done.state());
}

TEST(ServiceTest, ANodeGivenADeviceNameItCannotRunOnDoesNotStart) {
  const std::string dir = FreshDir("svc_bad_devices");
  for (const char* bad : {"gpu0", "cuda", "cpu,tpu:0", ","}) {
    const std::string command = absl::StrCat(QSEARCH_SERVER_BIN, " --listen 127.0.0.1:0 --data-dir ", dir,
                                             " --devices '", bad, "' 2>&1");
    FILE* pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string out;
    char buffer[256];
    while (fgets(buffer, sizeof buffer, pipe) != nullptr) out += buffer;
    const int status = pclose(pipe);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << bad << ": " << out;
    EXPECT_THAT(out, HasSubstr("--devices")) << bad;
    EXPECT_THAT(out, ::testing::AnyOf(HasSubstr("use cpu or cuda:N"), HasSubstr("give cpu or cuda:N"))) << bad;
  }
}

TEST(ServiceTest, CancelStopsARunningJobWithinFiveSeconds) {
  ServerProcess server(FreshDir("svc_cancel"));
  ASSERT_TRUE(server.ok());
  auto c = Connect(server);
  v1::JobSpec spec = TinySpec(50);
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, c->Create(spec, "long"));
  v1::SearchJob j = WaitFor(*c, job.name(), [](const v1::SearchJob& j) { return j.last_event().epoch_end(); }, 60);
  ASSERT_EQ(j.state(), v1::RUNNING);
  // A running job's history comes back at once: the job and the events stored so far.
  ASSERT_OK_AND_ASSIGN(QsearchClient::History history, c->GetHistory(job.name()));
  EXPECT_EQ(history.job.state(), v1::RUNNING);
  ASSERT_FALSE(history.events.empty());
  EXPECT_TRUE(Consecutive(history.events));
  EXPECT_GE(history.events.back().sequence(), j.last_sequence());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_OK(c->Cancel(job.name()));
  j = WaitFor(*c, job.name(), [](const v1::SearchJob& j) { return j.state() == v1::CANCELLED; }, 10);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(j.state(), v1::CANCELLED);
  EXPECT_LT(seconds, 5.0);
  // A queued job cancels at once.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob a, c->Create(spec, "a"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob b, c->Create(spec, "b"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob b_cancelled, c->Cancel(b.name()));
  EXPECT_EQ(b_cancelled.state(), v1::CANCELLED);
  ASSERT_OK(c->Cancel(a.name()));
}

TEST(ServiceTest, BadInputGetsItsCodeAndTheServerKeepsServing) {
  const std::string data = FreshDir("svc_bad");
  const std::string tokens = data + "/tokens";
  std::ofstream(tokens) << "alice-token alice\nbob-token bob\n";
  ServerProcess server(data, {"--auth-tokens", tokens, "--max-upload-bytes", "4096"});
  ASSERT_TRUE(server.ok());
  auto alice = Connect(server, "alice-token");
  auto bob = Connect(server, "bob-token");
  auto stranger = Connect(server, "nope");

  v1::JobSpec s = TinySpec();
  s.mutable_qss()->add_weight_candidates("fancy:bits=3");
  auto r = alice->Create(s, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("unknown quantizer scheme 'fancy'"));

  s = TinySpec();
  s.mutable_budget()->set_average_weight_bits(1);
  s.mutable_qpl()->set_min_bits(2);  // 1 bit on average fits only with 1-bit layers
  r = alice->Create(s, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("infeasible budget"));

  // Server paths are refused alike whether they exist or not: no probing the server.
  for (const char* path : {"/nonexistent/data", "/etc", "/usr/share/datasets/fashion-mnist"}) {
    s = TinySpec();
    s.mutable_dataset()->set_path(path);
    r = alice->Create(s, "");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << path;
    EXPECT_THAT(r.status().message(), HasSubstr("takes data and models as uploads")) << path;
  }

  EXPECT_EQ(stranger->Create(TinySpec(), "").status().code(), absl::StatusCode::kUnauthenticated);
  ASSERT_OK_AND_ASSIGN(v1::SearchJob mine, alice->Create(TinySpec(), "mine"));
  EXPECT_EQ(bob->Get(mine.name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->Cancel(mine.name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->Watch(mine.name(), 0, nullptr, nullptr).status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(auto bob_list, bob->List(v1::JOB_STATE_UNSPECIFIED, 10, ""));
  EXPECT_EQ(bob_list.jobs_size(), 0);

  // Uploads: oversize, wrong sha256, truncated then resumed.
  const std::string payload(3000, 'x');
  v1::UploadChunk first;
  first.set_upload_id("big");
  first.set_total_size(5000);
  first.set_sha256(Sha256Hex(std::string(5000, 'x')));
  first.set_data("x");
  EXPECT_EQ(alice->UploadChunks("dataset", {first}).status().code(), absl::StatusCode::kResourceExhausted);
  first.set_upload_id("big-model");
  EXPECT_EQ(alice->UploadChunks("model", {first}).status().code(), absl::StatusCode::kResourceExhausted);

  v1::UploadChunk wrong;
  wrong.set_upload_id("wrong");
  wrong.set_total_size(static_cast<std::int64_t>(payload.size()));
  wrong.set_sha256(Sha256Hex("something else"));
  wrong.set_data(payload);
  auto w = alice->UploadChunks("dataset", {wrong});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(w.status().message(), HasSubstr("upload again"));

  v1::UploadChunk part;
  part.set_upload_id("cut");
  part.set_total_size(static_cast<std::int64_t>(payload.size()));
  part.set_sha256(Sha256Hex(payload));
  part.set_data(payload.substr(0, 1000));
  auto cut = alice->UploadChunks("dataset", {part});
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(cut.status().message(), HasSubstr("resume from offset 1000"));
  v1::UploadChunk rest;
  rest.set_upload_id("cut");
  rest.set_offset(1000);
  rest.set_data(payload.substr(1000));
  ASSERT_OK_AND_ASSIGN(v1::Upload whole, alice->UploadChunks("dataset", {rest}));
  EXPECT_TRUE(whole.complete());
  EXPECT_EQ(whole.reference(), "sha256:" + Sha256Hex(payload));

  // A corrupt data file (the upload is not a tensor archive): the job fails with the
  // loader's message, the server goes on.
  s = TinySpec();
  s.mutable_dataset()->set_kind("archive");
  s.mutable_dataset()->set_path(whole.reference());
  ASSERT_OK_AND_ASSIGN(v1::SearchJob corrupt, alice->Create(s, "corrupt"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob corrupt_done, alice->Watch(corrupt.name(), 0, nullptr, nullptr));
  EXPECT_EQ(corrupt_done.state(), v1::FAILED);
  EXPECT_THAT(corrupt_done.error_message(), HasSubstr("not a tensor archive"));
  // The worker's canonical code reaches the job record.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob corrupt_record, alice->Get(corrupt.name()));
  EXPECT_EQ(corrupt_record.error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  // A model file that is not a TorchScript archive is refused when the job is created.
  const std::string bad_model = "not a torchscript archive";
  v1::UploadChunk m;
  m.set_upload_id("bad-model");
  m.set_total_size(static_cast<std::int64_t>(bad_model.size()));
  m.set_sha256(Sha256Hex(bad_model));
  m.set_data(bad_model);
  ASSERT_OK_AND_ASSIGN(v1::Upload model_up, alice->UploadChunks("model", {m}));
  v1::JobSpec with_model = TinySpec();
  with_model.set_model_path(model_up.reference());
  r = alice->Create(with_model, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("is not a TorchScript archive"));
  // Bob cannot use Alice's upload.
  EXPECT_EQ(bob->Create(s, "").status().code(), absl::StatusCode::kNotFound);

  ASSERT_OK_AND_ASSIGN(v1::SearchJob mine_done, alice->Watch(mine.name(), 0, nullptr, nullptr));
  EXPECT_EQ(mine_done.state(), v1::SUCCEEDED) << mine_done.error_message();
  EXPECT_EQ(alice->GetPolicy(corrupt.name()).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ServiceTest, UploadedTorchScriptModelIsSearched) {
  const std::string dir = FreshDir("svc_script");
  SaveTinyScriptNet(dir + "/net.pt");
  ServerProcess server(dir + "/data");
  ASSERT_TRUE(server.ok());
  auto c = Connect(server);
  ASSERT_OK_AND_ASSIGN(v1::Upload up, c->UploadFile(dir + "/net.pt", "model", "net"));
  v1::JobSpec s = TinySpec();
  s.set_model_path(up.reference());
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, c->Create(s, "script"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob done, c->Watch(job.name(), 0, nullptr, nullptr));
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  ASSERT_OK_AND_ASSIGN(v1::Policy p, c->GetPolicy(job.name()));
  ASSERT_EQ(p.layers_size(), 2);
  EXPECT_EQ(p.layers(0).name(), "c1");
  EXPECT_LE(p.cost().average_weight_bits(), 3.0 + 1e-9);
  ASSERT_OK(c->Download(job.name(), "checkpoint", dir + "/q.pt"));
  // The quantized model as TorchScript: plain LibTorch loads and runs it.
  ASSERT_OK(c->Download(job.name(), "torchscript", dir + "/quantized_model.pt"));
  torch::jit::Module quantized = torch::jit::load(dir + "/quantized_model.pt");
  quantized.eval();
  torch::NoGradGuard ng;
  const at::Tensor out = quantized.forward({torch::rand({3, 1, 28, 28})}).toTensor();
  EXPECT_EQ(out.sizes(), (std::vector<std::int64_t>{3, 10}));
}

TEST(ServiceTest, TlsServesTlsClientsAndRefusesPlaintext) {
  const std::string dir = FreshDir("svc_tls");
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
                          " -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " + dir + "/key.pem -out " +
                          dir + "/cert.pem > " + dir + "/openssl.log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl (installed by deploy/install-deps.sh) makes a test certificate";
  ServerProcess server(dir + "/data", {"--tls-cert", dir + "/cert.pem", "--tls-key", dir + "/key.pem"});
  ASSERT_TRUE(server.ok());
  ClientOptions tls;
  tls.server = server.address();
  tls.tls_ca = dir + "/cert.pem";
  auto secure = QsearchClient::Connect(tls).value();
  ASSERT_OK_AND_ASSIGN(auto list, secure->List(v1::JOB_STATE_UNSPECIFIED, 10, ""));
  EXPECT_EQ(list.jobs_size(), 0);
  ClientOptions plain;
  plain.server = server.address();
  auto insecure = QsearchClient::Connect(plain).value();
  EXPECT_EQ(insecure->List(v1::JOB_STATE_UNSPECIFIED, 10, "").status().code(), absl::StatusCode::kUnavailable);
}

TEST(ServiceTest, FiftyConcurrentClientsEveryJobAndEventAccountedFor) {
  const std::string data = FreshDir("svc_load");
  // A small uploaded archive keeps each job to a LibTorch start and a few milliseconds.
  v1::DatasetSpec ds;
  ds.set_kind("fashion_mnist");
  ds.set_train_size(120);
  ds.set_val_size(30);
  ds.set_test_size(60);
  ASSERT_OK_AND_ASSIGN(search::DataSplits splits, search::LoadData(ds));
  const std::string archive = data + "/small.pt";
  ASSERT_OK(search::WriteTensorArchive(archive, {torch::cat({splits.train.images, splits.test.images}),
                                                 torch::cat({splits.train.labels, splits.test.labels})}));
  ServerProcess server(data, {"--workers", "2", "--max-queued-per-tenant", "100"});
  ASSERT_TRUE(server.ok());
  auto uploader = Connect(server);
  ASSERT_OK_AND_ASSIGN(v1::Upload up, uploader->UploadFile(archive, "dataset", "small"));
  v1::JobSpec spec = TinySpec(0);
  spec.set_finetune_epochs(1);
  spec.mutable_dataset()->Clear();
  spec.mutable_dataset()->set_kind("archive");
  spec.mutable_dataset()->set_path(up.reference());

  constexpr int kClients = 50;
  std::vector<std::thread> threads;
  std::vector<absl::Status> status(kClients);
  std::vector<std::string> names(kClients);
  std::vector<std::vector<v1::JobEvent>> events(kClients);
  std::vector<v1::JobState> states(kClients, v1::JOB_STATE_UNSPECIFIED);
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto c = Connect(server);
      auto job = c->Create(spec, "load-" + std::to_string(i));
      if (!job.ok()) {
        status[i] = job.status();
        return;
      }
      names[i] = job->name();
      auto done = c->Watch(job->name(), 0, nullptr, [&](const v1::JobEvent& e) { events[i].push_back(e); });
      status[i] = done.status();
      if (done.ok()) states[i] = done->state();
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> distinct;
  for (int i = 0; i < kClients; ++i) {
    ASSERT_OK(status[i]) << "client " << i;
    EXPECT_EQ(states[i], v1::SUCCEEDED) << names[i];
    EXPECT_TRUE(Consecutive(events[i])) << names[i];
    EXPECT_EQ(events[i].back().phase(), v1::PHASE_DONE);
    distinct.insert(names[i]);
  }
  EXPECT_EQ(distinct.size(), static_cast<size_t>(kClients));
  ASSERT_OK_AND_ASSIGN(auto page, uploader->List(v1::SUCCEEDED, 100, ""));
  EXPECT_EQ(page.jobs_size(), kClients);
}

// Two servers on one PostgreSQL store (and one shared data directory): either answers any
// call, Watch on the one without workers streams what the other's worker writes (LISTEN/
// NOTIFY), idempotent Create holds across them, a cancel through either stops the worker,
// and a second server that would run workers on the same store is refused.
TEST(ServiceTest, TwoServersOnOnePostgresStoreShareJobsWatchAndCancel) {
  ASSERT_OK_AND_ASSIGN(auto pg, ::qsearch::testing::TestPostgres::Start(FreshDir("svc_pg_cluster")));
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("svc"));
  // Their own data dirs: the store is all they share. a runs workers (under leases), b
  // only answers calls.
  ServerProcess a(FreshDir("svc_pg_a"), {"--store", uri});
  ASSERT_TRUE(a.ok());
  ServerProcess b(FreshDir("svc_pg_b"), {"--store", uri, "--workers", "0"});
  ASSERT_TRUE(b.ok());
  auto ca = Connect(a), cb = Connect(b);
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, cb->Create(TinySpec(), "req-pg"));
  ASSERT_OK_AND_ASSIGN(v1::SearchJob again, ca->Create(TinySpec(), "req-pg"));
  EXPECT_EQ(again.name(), job.name()) << "same request_id through the other server, same job";
  std::vector<v1::JobEvent> events;
  ASSERT_OK_AND_ASSIGN(v1::SearchJob done,
                       cb->Watch(job.name(), 0, [](const v1::SearchJob&) {}, [&](const v1::JobEvent& e) {
                         events.push_back(e);
                       }));
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(Consecutive(events));
  EXPECT_EQ(events.back().phase(), v1::PHASE_DONE);
  ASSERT_OK_AND_ASSIGN(v1::SearchJob on_a, ca->Get(job.name()));
  EXPECT_EQ(on_a.state(), v1::SUCCEEDED);
  EXPECT_EQ(on_a.last_sequence(), events.back().sequence());
  ASSERT_OK_AND_ASSIGN(auto listed, cb->List(v1::JOB_STATE_UNSPECIFIED, 10, ""));
  ASSERT_EQ(listed.jobs_size(), 1);

  // Cancelled through the server without workers: the worker on the other one stops.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob long_job, cb->Create(TinySpec(50), "long"));
  v1::SearchJob j = WaitFor(*cb, long_job.name(), [](const v1::SearchJob& j) { return j.last_event().epoch_end(); }, 60);
  ASSERT_EQ(j.state(), v1::RUNNING);
  ASSERT_OK(cb->Cancel(long_job.name()));
  j = WaitFor(*ca, long_job.name(), [](const v1::SearchJob& j) { return j.state() == v1::CANCELLED; }, 10);
  EXPECT_EQ(j.state(), v1::CANCELLED);
  // Its worker slot (a runs one) is free again: the next job runs to the end.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob next, cb->Create(TinySpec(), "next"));
  j = WaitFor(*cb, next.name(), [](const v1::SearchJob& j) {
    return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED || j.state() == v1::CANCELLED;
  }, 120);
  EXPECT_EQ(j.state(), v1::SUCCEEDED) << j.error_message();
  ASSERT_OK_AND_ASSIGN(v1::SearchJob cancelled, ca->Get(long_job.name()));
  EXPECT_EQ(cancelled.state(), v1::CANCELLED) << "a cancelled job stays cancelled";
}

// Scale-out on PostgreSQL with nothing else shared: two API servers (--workers 0, each
// its own data dir) and two qsearch-agent nodes (their own scratch dirs). Uploads,
// checkpoints and artifacts travel through the store.
TEST(ServiceTest, TwoServersAndTwoAgentsShareOnlyPostgres) {
  ASSERT_OK_AND_ASSIGN(auto pg, ::qsearch::testing::TestPostgres::Start(FreshDir("svc_scale_cluster")));
  ASSERT_OK_AND_ASSIGN(const std::string uri, pg->NewDatabase("scale"));
  ServerProcess a(FreshDir("svc_scale_a"), {"--store", uri, "--workers", "0"});
  ServerProcess b(FreshDir("svc_scale_b"), {"--store", uri, "--workers", "0"});
  ASSERT_TRUE(a.ok() && b.ok());
  auto agent = [&](const std::string& name) {
    return std::make_unique<AgentProcess>(FreshDir("svc_scale_" + name), uri,
                                          std::vector<std::string>{"--lease-seconds", "2", "--node-name", name});
  };
  std::map<std::string, std::unique_ptr<AgentProcess>> agents;
  agents["agent-x"] = agent("agent-x");
  agents["agent-y"] = agent("agent-y");
  for (const auto& [name, p] : agents) ASSERT_TRUE(p->ok()) << name;
  ASSERT_OK_AND_ASSIGN(auto store, server::JobStore::Open(uri));

  // A TorchScript model uploaded through a, searched by jobs created through b.
  const std::string dir = FreshDir("svc_scale_files");
  SaveTinyScriptNet(dir + "/net.pt");
  ASSERT_OK_AND_ASSIGN(v1::Upload model, Connect(a)->UploadFile(dir + "/net.pt", "model", "net"));

  // 20 jobs from 10 clients, half through each server, each watched to its end.
  constexpr int kClients = 10, kJobsEach = 2;
  std::vector<std::string> names(kClients * kJobsEach);
  std::vector<v1::SearchJob> finals(names.size());
  std::vector<std::vector<v1::JobEvent>> streams(names.size());
  {
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        auto client = Connect(c % 2 ? a : b);
        for (int k = 0; k < kJobsEach; ++k) {
          const int i = c * kJobsEach + k;
          v1::JobSpec spec = TinySpec();
          spec.set_seed(i + 1);
          if (i < 2) spec.set_model_path(model.reference());
          auto job = client->Create(spec, "scale-" + std::to_string(i));
          if (!job.ok()) {
            ADD_FAILURE() << job.status();
            continue;
          }
          names[i] = job->name();
          auto done = client->Watch(job->name(), 0, nullptr, [&](const v1::JobEvent& e) { streams[i].push_back(e); });
          if (done.ok()) finals[i] = *done;
        }
      });
    }
    for (auto& t : clients) t.join();
  }
  std::map<std::string, int> ran_on;
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(finals[i].state(), v1::SUCCEEDED) << names[i] << ": " << finals[i].error_message();
    EXPECT_TRUE(Consecutive(streams[i])) << names[i];
    ASSERT_FALSE(streams[i].empty());
    EXPECT_EQ(streams[i].back().phase(), v1::PHASE_DONE);
    ASSERT_OK_AND_ASSIGN(auto holder, store->LeaseHolder(names[i]));
    EXPECT_FALSE(holder.second) << "a finished job holds no live lease";
    ++ran_on[holder.first];
  }
  EXPECT_EQ(ran_on.size(), 2u) << "jobs spread over both agents";
  for (const auto& [node, n] : ran_on) EXPECT_TRUE(agents.count(node)) << node;
  // The artifacts of a job an agent ran download through either server, as recorded.
  for (const ServerProcess* server : {&a, &b}) {
    const std::string path = dir + "/q" + server->address().substr(server->address().rfind(':') + 1) + ".pt";
    ASSERT_OK_AND_ASSIGN(std::string sha, Connect(*server)->Download(names[0], "torchscript", path));
    for (const auto& art : finals[0].artifacts()) {
      if (art.kind() == "torchscript") EXPECT_EQ(art.sha256(), sha);
    }
    EXPECT_NO_THROW(torch::jit::load(path));
  }

  // kill -9 the agent running a job: the other agent claims it once the lease lapses and
  // resumes from the checkpoint in the store. Then server a dies too: a client whose
  // target lists both servers reconnects to b. Its stream has no gap and no duplicate.
  ASSERT_OK_AND_ASSIGN(v1::SearchJob long_job, Connect(a)->Create(TinySpec(30), "scale-long"));
  const std::string target = "ipv4:" + a.address() + "," + b.address();
  ClientOptions both;
  both.server = target;
  both.watch_reconnects = 100;
  ASSERT_OK_AND_ASSIGN(auto watcher, QsearchClient::Connect(both));
  std::vector<v1::JobEvent> events;
  absl::StatusOr<v1::SearchJob> watched = absl::UnknownError("not watched");
  std::thread watch([&] { watched = watcher->Watch(long_job.name(), 0, nullptr, [&](const v1::JobEvent& e) {
                          events.push_back(e);
                        }); });
  // Until a checkpoint of it is in the store (written after each epoch).
  const std::string probe = dir + "/probe.pt";
  bool checkpointed = false;
  for (int i = 0; i < 600 && !checkpointed; ++i) {
    checkpointed = store->FetchBlob(server::JobBlobKey(long_job.name(), server::kCheckpointFile), probe).ok();
    if (!checkpointed) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(checkpointed);
  ASSERT_OK_AND_ASSIGN(auto first, store->LeaseHolder(long_job.name()));
  ASSERT_TRUE(first.second);
  ASSERT_TRUE(agents.count(first.first)) << first.first;
  agents[first.first]->Stop(SIGKILL);
  a.Stop(SIGKILL);
  watch.join();
  ASSERT_OK(watched);
  EXPECT_EQ(watched->state(), v1::SUCCEEDED) << watched->error_message();
  EXPECT_TRUE(Consecutive(events));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().phase(), v1::PHASE_DONE);
  int done_events = 0;
  bool resumed = false;
  for (const auto& e : events) {
    done_events += e.phase() == v1::PHASE_DONE;
    resumed |= absl::StrContains(e.message(), "resum");
  }
  EXPECT_EQ(done_events, 1);
  EXPECT_TRUE(resumed) << "the second run resumed from the stored checkpoint";
  ASSERT_OK_AND_ASSIGN(v1::SearchJob record, Connect(b)->Get(long_job.name()));
  EXPECT_EQ(record.attempts(), 2);
  EXPECT_EQ(record.last_sequence(), events.back().sequence());
  ASSERT_OK_AND_ASSIGN(auto second, store->LeaseHolder(long_job.name()));
  EXPECT_NE(second.first, first.first);
}

}  // namespace
}  // namespace qsearch
