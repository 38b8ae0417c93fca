// SearchCore without gRPC: defaults stored at Create, every refusal's canonical code,
// tenancy, uploads chunk by chunk, and artifacts opened and read by the core.
#include "server/search_core.h"

#include <filesystem>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cmath>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/sha256.h"
#include "server/data_layout.h"
#include "tests/test_util.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch::server {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class SearchCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::qsearch::testing::FreshDir(std::string("qsearch_core_") +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    store_ = JobStore::Open(dir_ + "/jobs.db").value();
    SchedulerOptions so;
    so.data_dir = dir_;
    so.workers = 0;  // store jobs, run none
    scheduler_ = std::make_unique<Scheduler>(store_.get(), &hub_, so);
    CoreOptions co;
    co.data_dir = dir_;
    co.max_upload_bytes = 1000;
    co.max_queued_per_tenant = 3;
    core_ = std::make_unique<SearchCore>(store_.get(), scheduler_.get(), &hub_, co);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // One upload of `bytes` in chunks of `chunk`.
  absl::StatusOr<v1::Upload> Upload(const std::string& tenant, const std::string& id, const std::string& bytes,
                                    size_t chunk, const std::string& sha = "") {
    absl::StatusOr<v1::Upload> last;
    for (size_t at = 0; at < bytes.size(); at += chunk) {
      v1::UploadChunk c;
      c.set_upload_id(id);
      c.set_offset(static_cast<std::int64_t>(at));
      c.set_data(bytes.substr(at, chunk));
      if (at == 0) {
        c.set_total_size(static_cast<std::int64_t>(bytes.size()));
        c.set_sha256(sha.empty() ? Sha256Hex(bytes) : sha);
      }
      last = core_->AppendUpload(tenant, "dataset", c);
      if (!last.ok()) return last;
    }
    return core_->EndUpload(tenant, id);
  }

  std::string dir_;
  std::unique_ptr<JobStore> store_;
  EventHub hub_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SearchCore> core_;
};

TEST_F(SearchCoreTest, CreateStoresTheSpecWithItsDefaultsOnce) {
  v1::JobSpec spec;  // nothing set
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, core_->Create("alice", "r1", spec));
  EXPECT_EQ(job.state(), v1::QUEUED);
  const v1::JobSpec& s = job.spec();
  EXPECT_EQ(s.model(), "lenet5");
  EXPECT_TRUE(s.has_pretrain_epochs());
  EXPECT_EQ(s.finetune_epochs(), 1);
  EXPECT_EQ(s.budget().average_weight_bits(), 4);
  EXPECT_EQ(s.qss().weight_candidates_size(), 4);
  EXPECT_EQ(s.qpl().activation_bits(), 8);
  // The same request again is the same job, whatever it carries now.
  spec.set_model("alexnet");
  ASSERT_OK_AND_ASSIGN(v1::SearchJob again, core_->Create("alice", "r1", spec));
  EXPECT_EQ(again.name(), job.name());
  // Another tenant does not see it.
  EXPECT_EQ(core_->Get("bob", job.name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->Cancel("bob", job.name()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SearchCoreTest, RefusalsCarryTheirCanonicalCodes) {
  const auto code = [&](void (*edit)(v1::JobSpec&)) {
    v1::JobSpec s = ::qsearch::testing::TinySpec();
    edit(s);
    return core_->Create("alice", "", s).status().code();
  };
  EXPECT_EQ(code([](v1::JobSpec& s) { s.set_model("alexnet"); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.mutable_budget()->set_average_weight_bits(0.2); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.mutable_dataset()->set_path("/no/such/dir"); }),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.set_model_path("/etc/passwd"); }), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.mutable_dataset()->set_kind("tarball"); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.mutable_qpl()->set_min_bits(std::nan("")); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.set_learning_rate(-1); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.mutable_dataset()->set_train_size(-1); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](v1::JobSpec& s) {
              for (int i = 0; i < 20000; ++i) s.add_op_names("layer_with_a_long_name." + std::to_string(i));
            }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.mutable_dataset()->set_path("sha256:"); }), absl::StatusCode::kNotFound);
  EXPECT_EQ(code([](v1::JobSpec& s) { s.set_model_path(std::string("sha256:") + std::string(64, 'a')); }),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->Create("alice", std::string(300, 'r'), ::qsearch::testing::TinySpec()).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (int i = 0; i < 3; ++i) ASSERT_OK(core_->Create("carol", "", ::qsearch::testing::TinySpec()));
  EXPECT_EQ(core_->Create("carol", "", ::qsearch::testing::TinySpec()).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core_->List("alice", v1::JOB_STATE_UNSPECIFIED, -1, "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SearchCoreTest, DataRootsAreTheOnlyServerPathsAndRecordsKeepReferences) {
  const std::string root = dir_ + "/shared";
  fs::create_directories(root + "/fashion");
  std::ofstream(root + "/net.pt") << "PK\x03\x04 not really";
  CoreOptions co;
  co.data_dir = dir_;
  co.data_roots = {root};
  SearchCore core(store_.get(), scheduler_.get(), &hub_, co);
  v1::JobSpec s = ::qsearch::testing::TinySpec();
  s.mutable_dataset()->set_path(root + "/fashion");
  EXPECT_OK(core.Create("alice", "", s));
  s.mutable_dataset()->set_path(root + "/missing");
  EXPECT_EQ(core.Create("alice", "", s).status().code(), absl::StatusCode::kNotFound);  // inside a root: may say
  s.mutable_dataset()->set_path(root + "/../jobs.db");  // climbing out of the root
  EXPECT_EQ(core.Create("alice", "", s).status().code(), absl::StatusCode::kPermissionDenied);
  fs::create_symlink(dir_ + "/jobs.db", root + "/link.db");  // a link out of the root
  s.mutable_dataset()->set_path(root + "/link.db");
  EXPECT_EQ(core.Create("alice", "", s).status().code(), absl::StatusCode::kPermissionDenied);

  // An uploaded model: the record keeps the reference, not the server's path; the model
  // is looked at (a zip?), never loaded.
  ASSERT_OK_AND_ASSIGN(v1::Upload up, Upload("alice", "m1", "not a zip at all", 100));
  v1::JobSpec m = ::qsearch::testing::TinySpec();
  m.set_model_path(up.reference());
  EXPECT_THAT(std::string(core.Create("alice", "", m).status().message()), HasSubstr("not a TorchScript archive"));
  ASSERT_OK_AND_ASSIGN(v1::Upload zip, Upload("alice", "m2", "PK\x03\x04 and then anything", 100));
  m.set_model_path(zip.reference());
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, core.Create("alice", "", m));
  EXPECT_EQ(job.spec().model_path(), zip.reference());
  EXPECT_EQ(job.spec().dataset().path(), "");
}

TEST_F(SearchCoreTest, UploadsResumeCheckAndBecomeReferences) {
  const std::string bytes(700, 'x');
  ASSERT_OK_AND_ASSIGN(v1::Upload done, Upload("alice", "u1", bytes, 256));
  EXPECT_TRUE(done.complete());
  EXPECT_EQ(done.reference(), "sha256:" + Sha256Hex(bytes));
  ASSERT_OK_AND_ASSIGN(std::string path, core_->ResolveReference("alice", done.reference()));
  EXPECT_EQ(fs::file_size(path), 700u);
  EXPECT_EQ(core_->ResolveReference("bob", done.reference()).status().code(), absl::StatusCode::kNotFound);

  // A chunk at the wrong offset says where to resume; a stream that stops early too.
  v1::UploadChunk c;
  c.set_upload_id("u2");
  c.set_total_size(10);
  c.set_sha256(Sha256Hex("0123456789"));
  c.set_data("0123");
  ASSERT_OK(core_->AppendUpload("alice", "dataset", c));
  c.set_offset(2);
  auto wrong = core_->AppendUpload("alice", "dataset", c);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong.status().message(), HasSubstr("resume from 4"));
  EXPECT_EQ(core_->EndUpload("alice", "u2").status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_OK_AND_ASSIGN(v1::Upload held, core_->GetUpload("alice", "u2"));
  EXPECT_EQ(held.received(), 4);

  EXPECT_EQ(Upload("alice", "u3", "abcdef", 3, std::string(64, '0')).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Upload("alice", "u4", std::string(1001, 'y'), 1001).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Upload("alice", "../etc", "abc", 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->GetUpload("bob", "u1").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SearchCoreTest, UploadQuotaDeletionAndExpiry) {
  CoreOptions co;
  co.data_dir = dir_;
  co.max_upload_bytes_per_tenant = 1000;
  core_ = std::make_unique<SearchCore>(store_.get(), scheduler_.get(), &hub_, co);
  ASSERT_OK_AND_ASSIGN(v1::Upload a, Upload("alice", "a", std::string(600, 'a'), 600));
  // 600 held: 500 more would pass 1000; another tenant has its own allowance.
  EXPECT_EQ(Upload("alice", "b", std::string(500, 'b'), 500).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_OK(Upload("bob", "b", std::string(500, 'b'), 500));
  // A queued job that reads an upload keeps it.
  v1::JobSpec spec = ::qsearch::testing::TinySpec();
  spec.mutable_dataset()->set_kind("archive");
  spec.mutable_dataset()->set_path(a.reference());
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, core_->Create("alice", "", spec));
  EXPECT_EQ(core_->DeleteUpload("alice", "a").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(core_->Cancel("alice", job.name()));
  ASSERT_OK(core_->DeleteUpload("alice", "a"));
  EXPECT_EQ(core_->ResolveReference("alice", a.reference()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->DeleteUpload("alice", "a").code(), absl::StatusCode::kNotFound);
  ASSERT_OK(Upload("alice", "b", std::string(500, 'b'), 500));  // room again

  // Abandoned uploads in progress go; finished ones stay.
  v1::UploadChunk c;
  c.set_upload_id("stale");
  c.set_total_size(100);
  c.set_sha256(std::string(64, 'c'));
  c.set_data("x");
  ASSERT_OK(core_->AppendUpload("alice", "dataset", c));
  EXPECT_EQ(core_->ExpireAbandonedUploads(std::chrono::hours(1)), 0);
  const fs::path part = fs::path(TenantDir(dir_, "uploads", "alice")) / "stale.part";
  fs::last_write_time(part, fs::file_time_type::clock::now() - std::chrono::hours(2));
  EXPECT_EQ(core_->ExpireAbandonedUploads(std::chrono::hours(1)), 1);
  EXPECT_EQ(core_->GetUpload("alice", "stale").status().code(), absl::StatusCode::kNotFound);
  EXPECT_OK(core_->GetUpload("alice", "b"));
}

TEST_F(SearchCoreTest, AFullDiskIsResourceExhaustedNotDataLoss) {
  // A file size limit stands in for a full disk: writes fail with EFBIG.
  const pid_t pid = fork();
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    const rlimit small{64, 64};
    setrlimit(RLIMIT_FSIZE, &small);
    auto u = Upload("alice", "big", std::string(200, 'z'), 100);
    _exit(u.status().code() == absl::StatusCode::kResourceExhausted ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(SearchCoreTest, ArtifactsAreOpenedAndReadByTheCore) {
  ASSERT_OK_AND_ASSIGN(v1::SearchJob job, core_->Create("alice", "", ::qsearch::testing::TinySpec()));
  EXPECT_EQ(core_->OpenArtifact("alice", job.name(), "policy", 0).status().code(), absl::StatusCode::kFailedPrecondition);
  auto unknown = core_->OpenArtifact("alice", job.name(), "weights", 0);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("policy, config_list, checkpoint, result or torchscript"));
  // As a finished worker leaves it: the file, and its record.
  const fs::path out = fs::path(scheduler_->JobDir(job.name())) / "out";
  fs::create_directories(out);
  const std::string policy = "{\"model\": \"lenet5\"}";
  std::ofstream(out / "policy.json") << policy;
  ASSERT_OK(store_->Update(job.name(), [&](v1::SearchJob& j) {
    j.set_state(v1::SUCCEEDED);
    v1::Artifact* a = j.add_artifacts();
    a->set_kind("policy");
    a->set_size(static_cast<std::int64_t>(policy.size()));
    a->set_sha256(Sha256Hex(policy));
    return absl::OkStatus();
  }));
  ASSERT_OK_AND_ASSIGN(ArtifactReader r, core_->OpenArtifact("alice", job.name(), "policy", 5));
  EXPECT_EQ(r.total, static_cast<std::int64_t>(policy.size()));
  std::string got;
  while (true) {
    ASSERT_OK_AND_ASSIGN(std::string chunk, r.Next(4));
    if (chunk.empty()) break;
    got += chunk;
  }
  EXPECT_EQ(got, policy.substr(5));
  EXPECT_EQ(core_->OpenArtifact("alice", job.name(), "policy", 100).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(core_->OpenArtifact("alice", job.name(), "checkpoint", 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->OpenArtifact("bob", job.name(), "policy", 0).status().code(), absl::StatusCode::kNotFound);
  fs::remove(out / "policy.json");
  EXPECT_EQ(core_->OpenArtifact("alice", job.name(), "policy", 0).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace qsearch::server
