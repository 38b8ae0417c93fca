// SearchCore: request checks, tenancy, input paths, uploads as content-addressed blobs
// (data_layout.h says where they live).
#include "server/search_core.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/artifacts.h"
#include "common/file_io.h"
#include "server/data_layout.h"
#include "search/precheck.h"
#include "search/spec.h"

namespace qsearch::server {
namespace {

namespace fs = std::filesystem;

bool ValidUploadId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  }
  return id != "." && id != "..";
}

struct UploadMeta {
  std::int64_t total_size = 0;
  std::string sha256, kind, reference;
};

absl::StatusOr<UploadMeta> ReadMeta(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("no such upload");
  UploadMeta m;
  in >> m.total_size >> m.sha256 >> m.kind >> m.reference;
  if (m.reference == "-") m.reference.clear();
  return m;
}

absl::Status WriteMeta(const fs::path& path, const UploadMeta& m) {
  return WriteFileDurably(path.string(), absl::StrCat(m.total_size, " ", m.sha256, " ", m.kind, " ",
                                                      m.reference.empty() ? "-" : m.reference, "\n"));
}

bool IsHexSha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

bool IsTerminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

SearchCore::SearchCore(JobStore* store, Scheduler* scheduler, EventHub* hub, CoreOptions options)
    : store_(store), scheduler_(scheduler), hub_(hub), options_(std::move(options)) {}

absl::StatusOr<std::string> SearchCore::InputPath(const std::string& tenant, const std::string& path,
                                                  const char* field) const {
  if (IsUploadReference(path)) return LocalUpload(*store_, options_.data_dir, tenant, path);
  // A server path: only below a root the operator shared (--data-roots). Anything else is
  // refused the same way whether or not it exists, so no one can probe the server's files.
  std::error_code ec;
  const fs::path wanted = fs::weakly_canonical(fs::absolute(path, ec), ec);
  for (const std::string& root : options_.data_roots) {
    const fs::path base = fs::weakly_canonical(root, ec);
    auto [r, w] = std::mismatch(base.begin(), base.end(), wanted.begin(), wanted.end());
    if (ec || r != base.end()) continue;
    if (!fs::exists(wanted, ec)) {
      return absl::NotFoundError(absl::StrCat(field, ": '", path, "' does not exist in the server's data roots"));
    }
    return wanted.string();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      field, ": this server takes data and models as uploads (the sha256:<hex> reference UploadDataset or "
             "UploadModel returns)",
      options_.data_roots.empty() ? "" : " or from its data roots", "; '", path, "' is neither"));
}

absl::StatusOr<v1::SearchJob> SearchCore::Create(const std::string& tenant, const std::string& request_id,
                                                 const v1::JobSpec& raw) {
  if (request_id.size() > 256) return absl::InvalidArgumentError("request_id is longer than 256 characters");
  // A retry of an accepted request gets its job, whatever the spec checks or the queue
  // would say now.
  if (!request_id.empty()) {
    auto existing = store_->FindByRequest(tenant, request_id);
    if (existing.ok() || existing.status().code() != absl::StatusCode::kNotFound) return existing;
  }
  if (raw.ByteSizeLong() > options_.max_spec_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("the job spec is ", raw.ByteSizeLong(), " bytes; at most ",
                                                   options_.max_spec_bytes, " are accepted"));
  }
  // Defaults once, here: the stored job shows exactly what runs. The record keeps upload
  // references as given; the worker gets the paths they stand for.
  const v1::JobSpec spec = search::WithDefaults(raw);
  RETURN_IF_ERROR(search::ValidateSpec(spec));
  v1::JobSpec resolved = spec;
  if (!spec.dataset().path().empty()) {
    ASSIGN_OR_RETURN(*resolved.mutable_dataset()->mutable_path(), InputPath(tenant, spec.dataset().path(), "dataset.path"));
  }
  if (!spec.model_path().empty()) {
    ASSIGN_OR_RETURN(*resolved.mutable_model_path(), InputPath(tenant, spec.model_path(), "model_path"));
  }
  // What can be checked without running anything a user sent (a model is only looked at,
  // never loaded: loading a TorchScript archive can run its code).
  RETURN_IF_ERROR(search::PrecheckSpec(resolved));
  ASSIGN_OR_RETURN(int queued, store_->CountInState(tenant, v1::QUEUED));
  if (queued >= options_.max_queued_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant has ", queued, " queued jobs, the limit is ",
                                                     options_.max_queued_per_tenant,
                                                     "; wait for some to start or cancel them"));
  }
  ASSIGN_OR_RETURN(int stored, store_->CountInState(tenant, v1::JOB_STATE_UNSPECIFIED));
  if (stored >= options_.max_jobs_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant has ", stored, " stored jobs, the limit is ",
                                                     options_.max_jobs_per_tenant, "; delete finished ones"));
  }
  bool created = false;
  ASSIGN_OR_RETURN(v1::SearchJob job, store_->Create(tenant, request_id, spec, &created));
  if (created) {
    v1::JobEvent e;
    e.set_phase(v1::PHASE_UNSPECIFIED);
    e.set_message("queued");
    (void)store_->AppendEvent(job.name(), e);
    scheduler_->Wake();
    hub_->Notify(job.name());
    ASSIGN_OR_RETURN(job, store_->Get(tenant, job.name()));
  }
  return job;
}

absl::StatusOr<v1::SearchJob> SearchCore::Get(const std::string& tenant, const std::string& name) {
  return store_->Get(tenant, name);
}

absl::StatusOr<JobPage> SearchCore::List(const std::string& tenant, v1::JobState state, int page_size,
                                         const std::string& page_token) {
  if (page_size < 0) return absl::InvalidArgumentError("page_size must not be negative");
  return store_->List(tenant, state, page_size, page_token);
}

absl::StatusOr<v1::SearchJob> SearchCore::Cancel(const std::string& tenant, const std::string& name) {
  RETURN_IF_ERROR(store_->Get(tenant, name).status());
  return scheduler_->Cancel(name);
}

absl::Status SearchCore::Delete(const std::string& tenant, const std::string& name) {
  RETURN_IF_ERROR(store_->Get(tenant, name).status());
  RETURN_IF_ERROR(store_->Delete(tenant, name));
  scheduler_->Forget(name);
  if (store_->Shared()) RETURN_IF_ERROR(store_->DeleteBlobs(JobBlobPrefix(name)));
  hub_->Notify(name);
  return absl::OkStatus();
}

absl::StatusOr<v1::Policy> SearchCore::GetPolicy(const std::string& tenant, const std::string& name) {
  ASSIGN_OR_RETURN(v1::SearchJob job, store_->Get(tenant, name));
  if (job.state() != v1::SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat("job ", name, " is ", v1::JobState_Name(job.state()),
                                                      "; a policy exists once it has SUCCEEDED"));
  }
  return job.result().policy();
}

absl::StatusOr<std::vector<v1::JobEvent>> SearchCore::EventsAfter(const std::string& tenant, const std::string& name,
                                                                  std::int64_t after, int limit) {
  RETURN_IF_ERROR(store_->Get(tenant, name).status());
  return store_->EventsAfter(name, after, limit);
}

absl::StatusOr<ArtifactReader> SearchCore::OpenArtifact(const std::string& tenant, const std::string& name,
                                                        const std::string& kind, std::int64_t offset) {
  ASSIGN_OR_RETURN(v1::SearchJob job, store_->Get(tenant, name));
  const ArtifactKind* known = FindArtifactKind(kind);
  if (known == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown artifact kind '", kind, "'; use ", ArtifactKindList()));
  }
  if (job.state() != v1::SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat("job ", name, " is ", v1::JobState_Name(job.state()),
                                                      "; artifacts exist once it has SUCCEEDED"));
  }
  for (const auto& a : job.artifacts()) {
    if (a.kind() != kind) continue;
    if (offset < 0 || offset > a.size()) {
      return absl::OutOfRangeError(absl::StrCat("offset ", offset, " is outside the artifact's ", a.size(), " bytes"));
    }
    const fs::path file = fs::path(scheduler_->JobDir(name)) / "out" / known->file;
    std::error_code ec;
    if (store_->Shared() && !fs::exists(file, ec)) {  // written on another node: the store has it
      fs::create_directories(file.parent_path(), ec);
      const absl::Status fetched = store_->FetchBlob(JobBlobKey(name, known->file), file.string());
      if (absl::IsNotFound(fetched)) return absl::DataLossError("the artifact is missing from the job store");
      RETURN_IF_ERROR(fetched);
    }
    ArtifactReader r;
    r.in = std::make_unique<std::ifstream>(file, std::ios::binary);
    if (!*r.in) return absl::DataLossError("the artifact file is missing on the server");
    r.in->seekg(offset);
    r.offset = offset;
    r.total = a.size();
    r.sha256 = a.sha256();
    return r;
  }
  return absl::NotFoundError(absl::StrCat("job ", name, " has no ", kind, " artifact"));
}

absl::StatusOr<std::string> ArtifactReader::Next(std::size_t max_bytes) {
  if (offset >= total) return std::string();
  std::string buf(static_cast<std::size_t>(std::min<std::int64_t>(static_cast<std::int64_t>(max_bytes), total - offset)),
                  '\0');
  in->read(buf.data(), static_cast<std::streamsize>(buf.size()));
  buf.resize(static_cast<std::size_t>(in->gcount()));
  if (buf.empty()) return absl::DataLossError("the artifact file is shorter than its record");
  offset += static_cast<std::int64_t>(buf.size());
  return buf;
}

absl::StatusOr<v1::Upload> SearchCore::AppendUpload(const std::string& tenant, const std::string& kind,
                                                    const v1::UploadChunk& chunk) {
  if (!ValidUploadId(chunk.upload_id())) {
    return absl::InvalidArgumentError("upload_id must be 1-128 characters of letters, digits, '-', '_' or '.'");
  }
  absl::MutexLock lock(&upload_mu_);
  const fs::path dir = TenantDir(options_.data_dir, "uploads", tenant);
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path part = dir / (chunk.upload_id() + ".part");
  const fs::path meta_path = dir / (chunk.upload_id() + ".meta");
  UploadMeta meta;
  if (auto m = ReadMeta(meta_path); m.ok()) {
    meta = *m;
    if (!meta.reference.empty()) {
      return absl::AlreadyExistsError(absl::StrCat("upload ", chunk.upload_id(), " is complete as ", meta.reference));
    }
  } else {
    if (chunk.offset() != 0) {
      return absl::FailedPreconditionError(absl::StrCat("upload ", chunk.upload_id(),
                                                        " is unknown; start it at offset 0"));
    }
    if (chunk.total_size() <= 0) return absl::InvalidArgumentError("the first chunk must declare total_size > 0");
    if (!IsHexSha256(chunk.sha256())) {
      return absl::InvalidArgumentError("the first chunk must declare the file's sha256 as 64 lowercase hex digits");
    }
    if (chunk.total_size() > options_.max_upload_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("the upload declares ", chunk.total_size(),
                                                       " bytes; this server accepts at most ",
                                                       options_.max_upload_bytes, " (--max-upload-bytes)"));
    }
    ASSIGN_OR_RETURN(const std::int64_t held, HeldUploadBytes(tenant));
    if (held + chunk.total_size() > options_.max_upload_bytes_per_tenant) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the tenant holds ", held, " bytes of uploads; with ", chunk.total_size(), " more it would pass its limit of ",
          options_.max_upload_bytes_per_tenant, "; delete uploads it no longer needs (DeleteUpload)"));
    }
    meta = {chunk.total_size(), chunk.sha256(), kind, ""};
    RETURN_IF_ERROR(WriteMeta(meta_path, meta));
    RETURN_IF_ERROR(WriteFileDurably(part.string(), ""));
  }
  if (chunk.total_size() != 0 && chunk.total_size() != meta.total_size) {
    return absl::InvalidArgumentError("total_size differs from the one this upload started with");
  }
  if (!chunk.sha256().empty() && chunk.sha256() != meta.sha256) {
    return absl::InvalidArgumentError("sha256 differs from the one this upload started with");
  }
  const std::uintmax_t part_size = fs::file_size(part, ec);
  const std::int64_t held = ec ? 0 : static_cast<std::int64_t>(part_size);
  if (chunk.offset() != held) {
    return absl::FailedPreconditionError(absl::StrCat("chunk offset ", chunk.offset(), " but the server holds ", held,
                                                      " bytes of upload ", chunk.upload_id(), "; resume from ", held));
  }
  if (held + static_cast<std::int64_t>(chunk.data().size()) > meta.total_size) {
    return absl::InvalidArgumentError(absl::StrCat("chunk runs past the declared total_size of ", meta.total_size));
  }
  RETURN_IF_ERROR(AppendToFile(part.string(), chunk.data()));
  v1::Upload u;
  u.set_upload_id(chunk.upload_id());
  u.set_total_size(meta.total_size);
  u.set_received(held + static_cast<std::int64_t>(chunk.data().size()));
  if (u.received() < meta.total_size) return u;
  // Complete: check and publish.
  ASSIGN_OR_RETURN(std::string digest, Sha256File(part.string()));
  if (digest != meta.sha256) {
    fs::remove(part, ec);
    fs::remove(meta_path, ec);
    return absl::DataLossError(absl::StrCat("upload ", chunk.upload_id(), ": the bytes received hash to ", digest,
                                            ", not the declared ", meta.sha256, "; it was discarded, upload again"));
  }
  const fs::path blobs = TenantDir(options_.data_dir, "blobs", tenant);
  fs::create_directories(blobs, ec);
  RETURN_IF_ERROR(SyncPath(part.string()));
  fs::rename(part, blobs / digest, ec);
  if (ec) return ErrnoStatus("storing the finished upload", ec.value());
  RETURN_IF_ERROR(SyncPath(blobs.string()));
  meta.reference = absl::StrCat("sha256:", digest);
  // Every server and worker node reads it from a shared store.
  if (store_->Shared()) RETURN_IF_ERROR(store_->PutBlob(UploadBlobKey(tenant, meta.reference), (blobs / digest).string()));
  RETURN_IF_ERROR(WriteMeta(meta_path, meta));
  u.set_complete(true);
  u.set_reference(meta.reference);
  return u;
}

absl::StatusOr<v1::Upload> SearchCore::GetUpload(const std::string& tenant, const std::string& upload_id) {
  if (!ValidUploadId(upload_id)) return absl::InvalidArgumentError("bad upload_id");
  absl::MutexLock lock(&upload_mu_);
  const fs::path dir = TenantDir(options_.data_dir, "uploads", tenant);
  auto meta = ReadMeta(dir / (upload_id + ".meta"));
  if (!meta.ok()) return absl::NotFoundError(absl::StrCat("no upload '", upload_id, "'"));
  v1::Upload u;
  u.set_upload_id(upload_id);
  u.set_total_size(meta->total_size);
  if (!meta->reference.empty()) {
    u.set_received(meta->total_size);
    u.set_complete(true);
    u.set_reference(meta->reference);
  } else {
    std::error_code ec;
    const std::uintmax_t size = fs::file_size(dir / (upload_id + ".part"), ec);
    u.set_received(ec ? 0 : static_cast<std::int64_t>(size));
  }
  return u;
}

absl::StatusOr<v1::Upload> SearchCore::EndUpload(const std::string& tenant, const std::string& upload_id) {
  ASSIGN_OR_RETURN(v1::Upload u, GetUpload(tenant, upload_id));
  if (!u.complete()) {
    return absl::FailedPreconditionError(absl::StrCat("upload ", upload_id, " is incomplete: ", u.received(), " of ",
                                                      u.total_size(), " bytes received; resume from offset ",
                                                      u.received()));
  }
  return u;
}

absl::StatusOr<std::int64_t> SearchCore::HeldUploadBytes(const std::string& tenant) {
  std::int64_t held = 0;
  std::error_code ec;
  for (fs::directory_iterator it(TenantDir(options_.data_dir, "blobs", tenant), ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code size_ec;
    const auto size = it->file_size(size_ec);
    if (!size_ec) held += static_cast<std::int64_t>(size);
  }
  ec.clear();
  for (fs::directory_iterator it(TenantDir(options_.data_dir, "uploads", tenant), ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->path().extension() != ".meta") continue;
    auto meta = ReadMeta(it->path());
    if (meta.ok() && meta->reference.empty()) held += meta->total_size;  // reserved by an upload in progress
  }
  return held;
}

absl::Status SearchCore::DeleteUpload(const std::string& tenant, const std::string& upload_id) {
  if (!ValidUploadId(upload_id)) return absl::InvalidArgumentError("bad upload_id");
  absl::MutexLock lock(&upload_mu_);
  const fs::path dir = TenantDir(options_.data_dir, "uploads", tenant);
  ASSIGN_OR_RETURN(UploadMeta meta, ReadMeta(dir / (upload_id + ".meta")));
  std::error_code ec;
  if (!meta.reference.empty()) {
    // A job that will still read it keeps it.
    for (v1::JobState state : {v1::QUEUED, v1::RUNNING}) {
      std::string token;
      do {
        ASSIGN_OR_RETURN(JobPage page, store_->List(tenant, state, 500, token));
        for (const auto& job : page.jobs) {
          if (job.spec().dataset().path() == meta.reference || job.spec().model_path() == meta.reference) {
            return absl::FailedPreconditionError(absl::StrCat("upload ", upload_id, " is used by ", job.name(), ", which is ",
                                                              v1::JobState_Name(state), "; cancel it or wait"));
          }
        }
        token = page.next_page_token;
      } while (!token.empty());
    }
    // The blob goes unless another upload of the same content still names it.
    bool shared = false;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() != ".meta" || it->path().stem() == upload_id) continue;
      auto other = ReadMeta(it->path());
      shared = shared || (other.ok() && other->reference == meta.reference);
    }
    if (!shared) fs::remove(fs::path(TenantDir(options_.data_dir, "blobs", tenant)) / meta.reference.substr(7), ec);
    if (!shared && store_->Shared()) RETURN_IF_ERROR(store_->DeleteBlobs(UploadBlobKey(tenant, meta.reference)));
  }
  fs::remove(dir / (upload_id + ".part"), ec);
  fs::remove(dir / (upload_id + ".meta"), ec);
  return SyncPath(dir.string());
}

int SearchCore::ExpireAbandonedUploads(std::chrono::seconds max_age) {
  absl::MutexLock lock(&upload_mu_);
  int removed = 0;
  std::error_code ec;
  const auto now = fs::file_time_type::clock::now();
  for (fs::directory_iterator tenants(fs::path(options_.data_dir) / "uploads", ec), end; !ec && tenants != end;
       tenants.increment(ec)) {
    std::error_code uec;
    for (fs::directory_iterator it(tenants->path(), uec), e; !uec && it != e; it.increment(uec)) {
      if (it->path().extension() != ".meta") continue;
      auto meta = ReadMeta(it->path());
      if (!meta.ok() || !meta->reference.empty()) continue;
      fs::path part = it->path();
      part.replace_extension(".part");
      std::error_code tec;
      const auto touched = fs::last_write_time(fs::exists(part, tec) ? part : it->path(), tec);
      if (tec || now - touched < max_age) continue;
      fs::remove(part, tec);
      fs::remove(it->path(), tec);
      ++removed;
    }
  }
  return removed;
}

absl::StatusOr<std::string> SearchCore::ResolveReference(const std::string& tenant, const std::string& reference) {
  return LocalUpload(*store_, options_.data_dir, tenant, reference);
}

}  // namespace qsearch::server
