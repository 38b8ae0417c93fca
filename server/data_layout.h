// Where the server keeps things under --data-dir, in one place:
//   jobs.db                                  the job store
//   jobs/<id>/                               a job's directory (spec.json, worker.log, out/)
//   uploads/<tenant>/<upload_id>.part|.meta  uploads in progress
//   blobs/<tenant>/<sha256>                  finished uploads, by content
// <tenant> is a hash of the tenant name, so no tenant string ever becomes a path.
#ifndef QSEARCH_SERVER_DATA_LAYOUT_H_
#define QSEARCH_SERVER_DATA_LAYOUT_H_

#include <string>

#include "absl/status/statusor.h"

namespace qsearch::server {

std::string TenantDir(const std::string& data_dir, const std::string& area, const std::string& tenant);

// The blob an upload reference ("sha256:<hex>") names for `tenant`; NotFound for a
// malformed reference or one this tenant has no blob for.
absl::StatusOr<std::string> BlobPath(const std::string& data_dir, const std::string& tenant,
                                     const std::string& reference);

// Where that blob lives (or would, once fetched from a shared store); NotFound for a
// malformed reference.
absl::StatusOr<std::string> BlobHome(const std::string& data_dir, const std::string& tenant,
                                     const std::string& reference);

bool IsUploadReference(const std::string& path);

class JobStore;
// The local file of a finished upload: its blob under `data_dir`, first fetched from a
// shared store (JobStore::Shared) when this process has no copy. NotFound when neither
// holds it; the store's error when fetching fails.
absl::StatusOr<std::string> LocalUpload(JobStore& store, const std::string& data_dir, const std::string& tenant,
                                        const std::string& reference);

// Keys of what a shared store keeps as blobs (JobStore::PutBlob), so nodes need no shared
// directory: a finished upload ("uploads/<tenant hash>/<sha256>"), and a job's
// checkpoint and artifacts ("<job name>/<file>", under JobBlobPrefix).
std::string UploadBlobKey(const std::string& tenant, const std::string& reference);
std::string JobBlobPrefix(const std::string& job_name);
std::string JobBlobKey(const std::string& job_name, const std::string& file);
// A worker's checkpoint in the job's output directory (search/resume.h writes it).
inline constexpr char kCheckpointFile[] = "checkpoint.pt";

}  // namespace qsearch::server

#endif  // QSEARCH_SERVER_DATA_LAYOUT_H_
