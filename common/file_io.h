// Writing files so they survive a crash and fail with the right code: a whole file goes
// to a temporary name, is flushed to disk (fsync), renamed into place and the directory
// flushed, so readers see the old file or the new one, never a torn one; appends check
// every write. A full disk (ENOSPC, EDQUOT, EFBIG) is ResourceExhausted, not a later
// checksum mismatch.
#ifndef QSEARCH_COMMON_FILE_IO_H_
#define QSEARCH_COMMON_FILE_IO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace qsearch {

// The status for a failed system call on `what` with `err` (an errno value).
absl::Status ErrnoStatus(absl::string_view what, int err);

absl::Status WriteFileDurably(const std::string& path, absl::string_view bytes);
// Appends `bytes` to `path` (created when missing), without flushing to disk.
absl::Status AppendToFile(const std::string& path, absl::string_view bytes);
// fsync of a file, or of a directory (after creating, renaming or removing in it).
absl::Status SyncPath(const std::string& path);

}  // namespace qsearch

#endif  // QSEARCH_COMMON_FILE_IO_H_
