#include "client/client.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "common/status_macros.h"

namespace qsearch::client {
namespace {

namespace fs = std::filesystem;
constexpr std::size_t kChunkBytes = 256 * 1024;

bool IsTerminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

}  // namespace

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

absl::StatusOr<std::unique_ptr<QsearchClient>> QsearchClient::Connect(const ClientOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    std::ifstream in(options.tls_ca);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read the CA file ", options.tls_ca));
    std::stringstream pem;
    pem << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem.str();
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  auto channel = grpc::CreateCustomChannel(options.server, creds, args);
  return std::unique_ptr<QsearchClient>(new QsearchClient(channel, options));
}

QsearchClient::QsearchClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : channel_(std::move(channel)), stub_(v1::SearchService::NewStub(channel_)), options_(std::move(options)) {}

void QsearchClient::Prepare(grpc::ClientContext* ctx) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
}

absl::StatusOr<bool> QsearchClient::Healthy(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  RETURN_IF_ERROR(FromGrpc(stub->Check(&ctx, req, &resp)));
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

absl::StatusOr<v1::SearchJob> QsearchClient::Create(const v1::JobSpec& spec, const std::string& request_id) {
  v1::CreateSearchJobRequest req;
  req.set_request_id(request_id);
  *req.mutable_spec() = spec;
  // The request id makes retries safe: a retry after a lost reply returns the same job.
  grpc::Status s;
  v1::SearchJob job;
  for (int attempt = 0; attempt < 3; ++attempt) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    s = stub_->CreateSearchJob(&ctx, req, &job);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || request_id.empty()) break;
  }
  RETURN_IF_ERROR(FromGrpc(s));
  return job;
}

absl::StatusOr<v1::SearchJob> QsearchClient::Get(const std::string& name) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::GetSearchJobRequest req;
  req.set_name(name);
  v1::SearchJob job;
  RETURN_IF_ERROR(FromGrpc(stub_->GetSearchJob(&ctx, req, &job)));
  return job;
}

absl::StatusOr<v1::ListSearchJobsResponse> QsearchClient::List(v1::JobState state, int page_size,
                                                               const std::string& page_token) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::ListSearchJobsRequest req;
  req.set_state(state);
  req.set_page_size(page_size);
  req.set_page_token(page_token);
  v1::ListSearchJobsResponse resp;
  RETURN_IF_ERROR(FromGrpc(stub_->ListSearchJobs(&ctx, req, &resp)));
  return resp;
}

absl::StatusOr<v1::SearchJob> QsearchClient::Cancel(const std::string& name) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::CancelSearchJobRequest req;
  req.set_name(name);
  v1::SearchJob job;
  RETURN_IF_ERROR(FromGrpc(stub_->CancelSearchJob(&ctx, req, &job)));
  return job;
}

absl::Status QsearchClient::Delete(const std::string& name) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::DeleteSearchJobRequest req;
  req.set_name(name);
  v1::DeleteSearchJobResponse resp;
  return FromGrpc(stub_->DeleteSearchJob(&ctx, req, &resp));
}

absl::StatusOr<v1::Policy> QsearchClient::GetPolicy(const std::string& name) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::GetPolicyRequest req;
  req.set_name(name);
  v1::Policy p;
  RETURN_IF_ERROR(FromGrpc(stub_->GetPolicy(&ctx, req, &p)));
  return p;
}

absl::StatusOr<v1::SearchJob> QsearchClient::Watch(const std::string& name, std::int64_t after,
                                                   const std::function<void(const v1::SearchJob&)>& on_snapshot,
                                                   const std::function<void(const v1::JobEvent&)>& on_event) {
  int reconnects = 0;
  while (true) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    ctx.set_wait_for_ready(true);
    v1::WatchSearchJobRequest req;
    req.set_name(name);
    req.set_after_sequence(after);
    auto reader = stub_->WatchSearchJob(&ctx, req);
    v1::WatchSearchJobResponse resp;
    while (reader->Read(&resp)) {
      if (resp.has_snapshot()) {
        if (on_snapshot) on_snapshot(resp.snapshot());
      } else if (resp.event().sequence() > after) {
        after = resp.event().sequence();
        if (on_event) on_event(resp.event());
      }
    }
    const grpc::Status s = reader->Finish();
    if (s.ok()) {
      ASSIGN_OR_RETURN(v1::SearchJob job, Get(name));
      if (IsTerminal(job.state())) return job;
    } else if (s.error_code() != grpc::StatusCode::UNAVAILABLE || ++reconnects > options_.watch_reconnects) {
      return FromGrpc(s);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

absl::StatusOr<QsearchClient::History> QsearchClient::GetHistory(const std::string& name) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::WatchSearchJobRequest req;
  req.set_name(name);
  auto reader = stub_->WatchSearchJob(&ctx, req);
  History h;
  bool have_snapshot = false, complete = false;
  std::int64_t last = 0;  // the snapshot's newest event: stop there rather than wait on
  v1::WatchSearchJobResponse resp;
  while (reader->Read(&resp)) {
    if (resp.has_snapshot()) {
      h.job = resp.snapshot();
      have_snapshot = true;
      last = h.job.last_sequence();
    } else {
      h.events.push_back(resp.event());
    }
    if (have_snapshot && (h.events.empty() ? 0 : h.events.back().sequence()) >= last) {
      complete = true;
      ctx.TryCancel();
      break;
    }
  }
  const grpc::Status s = reader->Finish();
  if (complete || (s.ok() && have_snapshot)) return h;
  if (!s.ok()) return FromGrpc(s);
  return absl::UnavailableError(absl::StrCat("the server sent no snapshot of ", name));
}

absl::StatusOr<v1::Upload> QsearchClient::UploadChunks(const std::string& kind,
                                                       const std::vector<v1::UploadChunk>& chunks) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::Upload resp;
  auto writer = kind == "model" ? stub_->UploadModel(&ctx, &resp) : stub_->UploadDataset(&ctx, &resp);
  for (const auto& c : chunks) {
    if (!writer->Write(c)) break;  // the server ended the stream: Finish says why
  }
  writer->WritesDone();
  RETURN_IF_ERROR(FromGrpc(writer->Finish()));
  return resp;
}

absl::StatusOr<v1::Upload> QsearchClient::UploadFile(const std::string& path, const std::string& kind,
                                                     const std::string& upload_id) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  const std::int64_t size = static_cast<std::int64_t>(fs::file_size(path));
  ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
  std::int64_t offset = 0;
  {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::GetUploadRequest req;
    req.set_upload_id(upload_id);
    v1::Upload u;
    const grpc::Status s = stub_->GetUpload(&ctx, req, &u);
    if (s.ok() && u.complete()) return u;
    if (s.ok()) offset = u.received();  // resume
  }
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::Upload resp;
  auto writer = kind == "model" ? stub_->UploadModel(&ctx, &resp) : stub_->UploadDataset(&ctx, &resp);
  in.seekg(offset);
  std::string buf(kChunkBytes, '\0');
  bool first = true;
  do {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    v1::UploadChunk c;
    c.set_upload_id(upload_id);
    c.set_offset(offset);
    c.set_data(buf.data(), static_cast<size_t>(in.gcount()));
    if (first) {
      c.set_total_size(size);
      c.set_sha256(digest);
      c.set_filename(fs::path(path).filename().string());
      first = false;
    }
    offset += in.gcount();
    if (!writer->Write(c)) break;
  } while (offset < size);
  writer->WritesDone();
  RETURN_IF_ERROR(FromGrpc(writer->Finish()));
  return resp;
}

absl::StatusOr<std::string> QsearchClient::Download(const std::string& name, const std::string& kind,
                                                    const std::string& path) {
  std::int64_t offset = fs::exists(path) ? static_cast<std::int64_t>(fs::file_size(path)) : 0;
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::DownloadArtifactRequest req;
  req.set_name(name);
  req.set_kind(kind);
  req.set_offset(offset);
  auto reader = stub_->DownloadArtifact(&ctx, req);
  std::ofstream out(path, std::ios::binary | std::ios::app);
  v1::ArtifactChunk chunk;
  std::string expected;
  std::int64_t total = -1;
  while (reader->Read(&chunk)) {
    if (chunk.offset() != offset) return absl::DataLossError("the server sent a chunk out of order");
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    offset += static_cast<std::int64_t>(chunk.data().size());
    expected = chunk.sha256();
    total = chunk.total_size();
  }
  out.close();
  RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
  if (expected.empty()) {
    // Nothing was left to send: the file was already whole. Check it against the record.
    ASSIGN_OR_RETURN(v1::SearchJob job, Get(name));
    for (const auto& a : job.artifacts()) {
      if (a.kind() == kind) expected = a.sha256();
    }
  } else if (total != offset) {
    return absl::DataLossError(absl::StrCat("download stopped at ", offset, " of ", total, " bytes; run it again to resume"));
  }
  if (digest != expected) {
    return absl::DataLossError(absl::StrCat(path, " hashes to ", digest, " but the server's record says ", expected,
                                            "; delete it and download again"));
  }
  return digest;
}

}  // namespace qsearch::client
