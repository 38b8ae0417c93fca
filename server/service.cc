// gRPC callback reactors over SearchCore.
#include "server/service.h"

#include <deque>
#include <fstream>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace qsearch::server {
namespace {

constexpr int kEventBatch = 128;
constexpr std::size_t kChunkBytes = 64 * 1024;

// Runs a core call, turning any exception (the core throws none by design; an allocation
// can) into Internal: no exception may leave a gRPC callback.
template <typename Fn>
auto NoThrow(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("internal error: ", e.what()));
  } catch (...) {
    return absl::InternalError("internal error");
  }
}

// Sends the job snapshot, then events after the client's sequence number as the store
// gets them, and finishes once the job is terminal and every event is out.
class WatchReactor : public grpc::ServerWriteReactor<v1::WatchSearchJobResponse> {
 public:
  WatchReactor(SearchCore* core, std::string tenant, std::string name, std::int64_t after)
      : core_(core), tenant_(std::move(tenant)), name_(std::move(name)), after_(after),
        link_(std::make_shared<Link>()) {
    link_->reactor = this;
    auto job = NoThrow([&] { return core_->Get(tenant_, name_); });
    absl::MutexLock lock(&link_->mu);
    if (!job.ok()) {
      FinishLocked(ToGrpcStatus(job.status()));
      return;
    }
    *response_.mutable_snapshot() = *job;
    writing_ = true;
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&link_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    NextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&link_->mu);
    if (!writing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&link_->mu);
      link_->reactor = nullptr;
      if (wait_id_ != 0) core_->hub()->Forget(name_, wait_id_);
    }
    delete this;
  }

 private:
  // Outlives the reactor: the hub's wake-up holds it, and finds the reactor gone.
  struct Link {
    absl::Mutex mu;
    WatchReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
  };

  void FinishLocked(const grpc::Status& s) {
    if (finished_) return;
    finished_ = true;
    Finish(s);
  }

  void NextLocked() {
    while (!finished_) {
      const std::uint64_t version = core_->hub()->Version(name_);
      if (pending_.empty()) {
        auto events = NoThrow([&] { return core_->EventsAfter(tenant_, name_, after_, kEventBatch); });
        if (!events.ok()) {
          FinishLocked(ToGrpcStatus(events.status()));
          return;
        }
        pending_.assign(events->begin(), events->end());
      }
      if (!pending_.empty()) {
        *response_.mutable_event() = pending_.front();
        after_ = pending_.front().sequence();
        pending_.pop_front();
        writing_ = true;
        StartWrite(&response_);
        return;
      }
      auto job = NoThrow([&] { return core_->Get(tenant_, name_); });
      if (!job.ok()) {
        FinishLocked(ToGrpcStatus(job.status()));
        return;
      }
      if (IsTerminal(job->state()) && job->last_sequence() <= after_) {
        FinishLocked(grpc::Status::OK);
        return;
      }
      std::shared_ptr<Link> link = link_;
      wait_id_ = core_->hub()->Wait(name_, version, [link] {
        absl::MutexLock lock(&link->mu);
        if (link->reactor == nullptr) return;
        link->reactor->wait_id_ = 0;
        if (!link->reactor->writing_) link->reactor->NextLocked();
      });
      if (wait_id_ != 0) return;
    }
  }

  SearchCore* core_;
  const std::string tenant_, name_;
  std::int64_t after_;
  std::shared_ptr<Link> link_;
  v1::WatchSearchJobResponse response_;
  std::deque<v1::JobEvent> pending_;
  bool writing_ = false;
  bool finished_ = false;
  std::uint64_t wait_id_ = 0;  // registered with the hub, not yet woken
};

class UploadReactor : public grpc::ServerReadReactor<v1::UploadChunk> {
 public:
  UploadReactor(SearchCore* core, std::string tenant, std::string kind, v1::Upload* response)
      : core_(core), tenant_(std::move(tenant)), kind_(std::move(kind)), response_(response) {
    StartRead(&chunk_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      if (upload_id_.empty()) {
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the upload stream carried no chunk"));
        return;
      }
      auto u = NoThrow([&] { return core_->EndUpload(tenant_, upload_id_); });
      if (u.ok()) *response_ = *u;
      Finish(ToGrpcStatus(u.status()));
      return;
    }
    if (upload_id_.empty()) upload_id_ = chunk_.upload_id();
    if (chunk_.upload_id() != upload_id_) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "every chunk of a stream must carry the same upload_id"));
      return;
    }
    auto u = NoThrow([&] { return core_->AppendUpload(tenant_, kind_, chunk_); });
    if (!u.ok()) {
      Finish(ToGrpcStatus(u.status()));
      return;
    }
    StartRead(&chunk_);
  }
  void OnDone() override { delete this; }

 private:
  SearchCore* core_;
  const std::string tenant_, kind_;
  v1::Upload* response_;
  v1::UploadChunk chunk_;
  std::string upload_id_;
};

// Streams an artifact the core opened, chunk by chunk.
class DownloadReactor : public grpc::ServerWriteReactor<v1::ArtifactChunk> {
 public:
  DownloadReactor(SearchCore* core, const std::string& tenant, const v1::DownloadArtifactRequest& req) {
    auto reader = NoThrow([&] { return core->OpenArtifact(tenant, req.name(), req.kind(), req.offset()); });
    if (!reader.ok()) {
      Finish(ToGrpcStatus(reader.status()));
      return;
    }
    reader_ = std::move(*reader);
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    const std::int64_t at = reader_.offset;
    auto data = NoThrow([&] { return reader_.Next(kChunkBytes); });
    if (!data.ok() || data->empty()) {
      Finish(ToGrpcStatus(data.status()));
      return;
    }
    chunk_.set_offset(at);
    chunk_.set_total_size(reader_.total);
    chunk_.set_sha256(reader_.sha256);
    *chunk_.mutable_data() = std::move(*data);
    StartWrite(&chunk_);
  }

  ArtifactReader reader_;
  v1::ArtifactChunk chunk_;
};

// A stream that only reports an error (e.g. UNAUTHENTICATED) and goes away.
template <typename Reactor>
struct Refuse : Reactor {
  explicit Refuse(const grpc::Status& s) { this->Finish(s); }
  void OnDone() override { delete this; }
};

// Runs `fn(tenant)` -> absl::Status and finishes the call with its mapped status.
template <typename Fn>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, const absl::StatusOr<std::string>& tenant, Fn fn) {
  auto* reactor = ctx->DefaultReactor();
  if (!tenant.ok()) {
    reactor->Finish(ToGrpcStatus(tenant.status()));
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(NoThrow([&] { return fn(*tenant); })));
  return reactor;
}

// Copies a StatusOr's value into `out` and returns its status.
template <typename T>
absl::Status Into(absl::StatusOr<T> v, T* out) {
  if (v.ok()) *out = std::move(*v);
  return v.status();
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // Abseil's canonical codes are gRPC's codes, number for number.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::StatusOr<std::map<std::string, std::string>> ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the token file ", path));
  std::map<std::string, std::string> tokens;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const std::string uncommented = line.substr(0, line.find('#'));
    absl::string_view text = absl::StripAsciiWhitespace(uncommented);
    if (text.empty()) continue;
    std::vector<std::string> parts = absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(path, " line ", number, ": expected 'token tenant'"));
    }
    tokens[parts[0]] = parts[1];
  }
  if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " holds no token"));
  return tokens;
}

absl::StatusOr<std::string> SearchServiceImpl::Tenant(grpc::CallbackServerContext* ctx) const {
  if (tokens_.empty()) return std::string("default");
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  auto t = tokens_.find(std::string(value));
  if (t == tokens_.end()) return absl::UnauthenticatedError("unknown token");
  return t->second;
}

grpc::ServerUnaryReactor* SearchServiceImpl::CreateSearchJob(grpc::CallbackServerContext* ctx,
                                                             const v1::CreateSearchJobRequest* req,
                                                             v1::SearchJob* resp) {
  return Unary(ctx, Tenant(ctx),
               [&](const std::string& t) { return Into(core_->Create(t, req->request_id(), req->spec()), resp); });
}

grpc::ServerUnaryReactor* SearchServiceImpl::GetSearchJob(grpc::CallbackServerContext* ctx,
                                                          const v1::GetSearchJobRequest* req, v1::SearchJob* resp) {
  return Unary(ctx, Tenant(ctx), [&](const std::string& t) { return Into(core_->Get(t, req->name()), resp); });
}

grpc::ServerUnaryReactor* SearchServiceImpl::ListSearchJobs(grpc::CallbackServerContext* ctx,
                                                            const v1::ListSearchJobsRequest* req,
                                                            v1::ListSearchJobsResponse* resp) {
  return Unary(ctx, Tenant(ctx), [&](const std::string& t) -> absl::Status {
    auto page = core_->List(t, req->state(), req->page_size(), req->page_token());
    if (!page.ok()) return page.status();
    for (auto& j : page->jobs) *resp->add_jobs() = std::move(j);
    resp->set_next_page_token(page->next_page_token);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* SearchServiceImpl::CancelSearchJob(grpc::CallbackServerContext* ctx,
                                                             const v1::CancelSearchJobRequest* req,
                                                             v1::SearchJob* resp) {
  return Unary(ctx, Tenant(ctx), [&](const std::string& t) { return Into(core_->Cancel(t, req->name()), resp); });
}

grpc::ServerUnaryReactor* SearchServiceImpl::DeleteSearchJob(grpc::CallbackServerContext* ctx,
                                                             const v1::DeleteSearchJobRequest* req,
                                                             v1::DeleteSearchJobResponse*) {
  return Unary(ctx, Tenant(ctx), [&](const std::string& t) { return core_->Delete(t, req->name()); });
}

grpc::ServerUnaryReactor* SearchServiceImpl::GetPolicy(grpc::CallbackServerContext* ctx,
                                                       const v1::GetPolicyRequest* req, v1::Policy* resp) {
  return Unary(ctx, Tenant(ctx), [&](const std::string& t) { return Into(core_->GetPolicy(t, req->name()), resp); });
}

grpc::ServerUnaryReactor* SearchServiceImpl::GetUpload(grpc::CallbackServerContext* ctx,
                                                       const v1::GetUploadRequest* req, v1::Upload* resp) {
  return Unary(ctx, Tenant(ctx), [&](const std::string& t) { return Into(core_->GetUpload(t, req->upload_id()), resp); });
}

grpc::ServerUnaryReactor* SearchServiceImpl::DeleteUpload(grpc::CallbackServerContext* ctx,
                                                          const v1::DeleteUploadRequest* req,
                                                          v1::DeleteUploadResponse*) {
  return Unary(ctx, Tenant(ctx), [&](const std::string& t) { return core_->DeleteUpload(t, req->upload_id()); });
}

grpc::ServerWriteReactor<v1::WatchSearchJobResponse>* SearchServiceImpl::WatchSearchJob(
    grpc::CallbackServerContext* ctx, const v1::WatchSearchJobRequest* req) {
  auto tenant = Tenant(ctx);
  if (!tenant.ok()) {
    return new Refuse<grpc::ServerWriteReactor<v1::WatchSearchJobResponse>>(ToGrpcStatus(tenant.status()));
  }
  return new WatchReactor(core_, *tenant, req->name(), req->after_sequence());
}

grpc::ServerReadReactor<v1::UploadChunk>* SearchServiceImpl::Upload(grpc::CallbackServerContext* ctx,
                                                                    v1::Upload* resp, const std::string& kind) {
  auto tenant = Tenant(ctx);
  if (!tenant.ok()) {
    return new Refuse<grpc::ServerReadReactor<v1::UploadChunk>>(ToGrpcStatus(tenant.status()));
  }
  return new UploadReactor(core_, *tenant, kind, resp);
}

grpc::ServerReadReactor<v1::UploadChunk>* SearchServiceImpl::UploadModel(grpc::CallbackServerContext* ctx,
                                                                         v1::Upload* resp) {
  return Upload(ctx, resp, "model");
}

grpc::ServerReadReactor<v1::UploadChunk>* SearchServiceImpl::UploadDataset(grpc::CallbackServerContext* ctx,
                                                                           v1::Upload* resp) {
  return Upload(ctx, resp, "dataset");
}

grpc::ServerWriteReactor<v1::ArtifactChunk>* SearchServiceImpl::DownloadArtifact(
    grpc::CallbackServerContext* ctx, const v1::DownloadArtifactRequest* req) {
  auto tenant = Tenant(ctx);
  if (!tenant.ok()) {
    return new Refuse<grpc::ServerWriteReactor<v1::ArtifactChunk>>(ToGrpcStatus(tenant.status()));
  }
  return new DownloadReactor(core_, *tenant, *req);
}

}  // namespace qsearch::server
