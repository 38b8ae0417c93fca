// SearchCore: what the SearchService does, with no gRPC in sight: checks and stores
// jobs, hands them to the Scheduler, serves events, policies, artifacts and uploads.
// Every call names the tenant; another tenant's jobs and uploads are NotFound.
// The gRPC shim (service.h) only maps requests, statuses and streams onto this.
#ifndef QSEARCH_SERVER_SEARCH_CORE_H_
#define QSEARCH_SERVER_SEARCH_CORE_H_

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/event_hub.h"
#include "server/job_store.h"
#include "server/scheduler.h"

namespace qsearch::server {

// An artifact being read for a download: chunks from `offset` on.
struct ArtifactReader {
  std::unique_ptr<std::ifstream> in;
  std::int64_t offset = 0, total = 0;
  std::string sha256;  // of the whole file, as recorded
  // Up to `max_bytes` more bytes; "" at the end. DataLoss when the file is shorter than
  // its record.
  absl::StatusOr<std::string> Next(std::size_t max_bytes);
};

struct CoreOptions {
  std::string data_dir;
  // Server directories tenants may name in dataset.path / model_path besides uploads
  // (e.g. a shared data set mount); none by default.
  std::vector<std::string> data_roots;
  std::int64_t max_upload_bytes = std::int64_t{1} << 30;
  std::int64_t max_upload_bytes_per_tenant = std::int64_t{20} << 30;  // finished and partial
  std::size_t max_spec_bytes = 64 << 10;
  int max_queued_per_tenant = 100;
  int max_jobs_per_tenant = 1000;  // stored, any state
};

class SearchCore {
 public:
  SearchCore(JobStore* store, Scheduler* scheduler, EventHub* hub, CoreOptions options);

  // Stores the spec with its defaults applied. InvalidArgument for a bad spec (unknown
  // model or scheme, a value out of range, infeasible budget, a file that is not a
  // TorchScript archive, a spec over max_spec_bytes); NotFound for an upload reference this
  // tenant does not have; PermissionDenied for any other server path outside the data
  // roots (whether or not it exists); ResourceExhausted past the per-tenant job limits.
  absl::StatusOr<v1::SearchJob> Create(const std::string& tenant, const std::string& request_id,
                                       const v1::JobSpec& spec);
  absl::StatusOr<v1::SearchJob> Get(const std::string& tenant, const std::string& name);
  absl::StatusOr<JobPage> List(const std::string& tenant, v1::JobState state, int page_size,
                               const std::string& page_token);
  absl::StatusOr<v1::SearchJob> Cancel(const std::string& tenant, const std::string& name);
  absl::Status Delete(const std::string& tenant, const std::string& name);
  // FailedPrecondition until the job SUCCEEDED.
  absl::StatusOr<v1::Policy> GetPolicy(const std::string& tenant, const std::string& name);
  absl::StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& tenant, const std::string& name,
                                                        std::int64_t after, int limit);
  // A finished job's artifact (a kind of common/artifacts.h), open at `offset`.
  // InvalidArgument for an unknown kind, FailedPrecondition before SUCCEEDED, OutOfRange
  // for an offset outside the file, DataLoss when the file is gone.
  absl::StatusOr<ArtifactReader> OpenArtifact(const std::string& tenant, const std::string& name,
                                              const std::string& kind, std::int64_t offset);

  // Uploads. Append takes one chunk: its offset must equal the bytes held; the first
  // chunk declares total_size and sha256. When the last byte arrives the file is checked
  // (DataLoss on a sha256 mismatch, and the partial file is dropped) and becomes a
  // content-addressed blob. `kind` is "model" or "dataset".
  absl::StatusOr<v1::Upload> AppendUpload(const std::string& tenant, const std::string& kind,
                                          const v1::UploadChunk& chunk);
  // The stream ended: the upload as it stands (FailedPrecondition, saying where to resume,
  // when bytes are missing).
  absl::StatusOr<v1::Upload> EndUpload(const std::string& tenant, const std::string& upload_id);
  absl::StatusOr<v1::Upload> GetUpload(const std::string& tenant, const std::string& upload_id);
  // Removes an upload (in progress or finished; a finished one's blob unless another
  // upload holds the same bytes). NotFound for an unknown one; FailedPrecondition while a
  // QUEUED or RUNNING job of the tenant names it.
  absl::Status DeleteUpload(const std::string& tenant, const std::string& upload_id);
  // Removes uploads in progress that received nothing for `max_age`; how many.
  int ExpireAbandonedUploads(std::chrono::seconds max_age);
  // "sha256:<hex>" -> the blob's path, for this tenant.
  absl::StatusOr<std::string> ResolveReference(const std::string& tenant, const std::string& reference);
  // The server path a spec's dataset.path / model_path (`field`) stands for.
  absl::StatusOr<std::string> InputPath(const std::string& tenant, const std::string& path, const char* field) const;

  EventHub* hub() { return hub_; }

 private:
  // Bytes a tenant's uploads hold: finished blobs, and the declared size of those in
  // progress.
  absl::StatusOr<std::int64_t> HeldUploadBytes(const std::string& tenant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(upload_mu_);

  JobStore* store_;
  Scheduler* scheduler_;
  EventHub* hub_;
  CoreOptions options_;
  absl::Mutex upload_mu_;  // one upload chunk at a time: appends are short
};

bool IsTerminal(v1::JobState state);

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_SEARCH_CORE_H_
