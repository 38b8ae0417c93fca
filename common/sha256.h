// SHA-256 of byte strings and files (OpenSSL's libcrypto), as lowercase hex.
#ifndef QSEARCH_COMMON_SHA256_H_
#define QSEARCH_COMMON_SHA256_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qsearch {

std::string Sha256Hex(absl::string_view bytes);
// NotFound when the file cannot be opened.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Incremental hashing, for streams.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(absl::string_view bytes);
  std::string HexDigest();  // ends the hash

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qsearch

#endif  // QSEARCH_COMMON_SHA256_H_
