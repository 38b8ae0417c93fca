// Paths under the data directory.
#include "server/data_layout.h"

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/job_store.h"

namespace qsearch::server {
namespace {

bool IsHexSha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

std::string TenantDir(const std::string& data_dir, const std::string& area, const std::string& tenant) {
  return (std::filesystem::path(data_dir) / area / Sha256Hex(tenant).substr(0, 16)).string();
}

bool IsUploadReference(const std::string& path) { return absl::StartsWith(path, "sha256:"); }

std::string UploadBlobKey(const std::string& tenant, const std::string& reference) {
  return absl::StrCat("uploads/", Sha256Hex(tenant).substr(0, 16), "/",
                      IsUploadReference(reference) ? reference.substr(7) : reference);
}

std::string JobBlobPrefix(const std::string& job_name) { return job_name + "/"; }

std::string JobBlobKey(const std::string& job_name, const std::string& file) { return JobBlobPrefix(job_name) + file; }

absl::StatusOr<std::string> BlobHome(const std::string& data_dir, const std::string& tenant,
                                     const std::string& reference) {
  const std::string hex = IsUploadReference(reference) ? reference.substr(7) : "";
  if (!IsHexSha256(hex)) return absl::NotFoundError(absl::StrCat("no finished upload with reference ", reference));
  return (std::filesystem::path(TenantDir(data_dir, "blobs", tenant)) / hex).string();
}

absl::StatusOr<std::string> BlobPath(const std::string& data_dir, const std::string& tenant,
                                     const std::string& reference) {
  ASSIGN_OR_RETURN(std::string blob, BlobHome(data_dir, tenant, reference));
  std::error_code ec;
  if (!std::filesystem::is_regular_file(blob, ec)) {
    return absl::NotFoundError(absl::StrCat("no finished upload with reference ", reference));
  }
  return blob;
}

absl::StatusOr<std::string> LocalUpload(JobStore& store, const std::string& data_dir, const std::string& tenant,
                                        const std::string& reference) {
  absl::StatusOr<std::string> local = BlobPath(data_dir, tenant, reference);
  if (local.ok() || !store.Shared()) return local;
  // Uploaded through another server: the shared store has it.
  ASSIGN_OR_RETURN(const std::string home, BlobHome(data_dir, tenant, reference));
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(home).parent_path(), ec);
  const absl::Status fetched = store.FetchBlob(UploadBlobKey(tenant, reference), home);
  if (absl::IsNotFound(fetched)) return local.status();
  RETURN_IF_ERROR(fetched);
  return home;
}

}  // namespace qsearch::server
