// POSIX file writes with fsync.
#include "common/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace qsearch {
namespace {

absl::Status WriteAll(int fd, absl::string_view bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(absl::StrCat("writing ", path), errno);
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ErrnoStatus(absl::string_view what, int err) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::ResourceExhaustedError(absl::StrCat(message, " (the server's disk or its limits are full)"));
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status SyncPath(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(absl::StrCat("opening ", path), errno);
  const int r = fsync(fd);
  const int err = errno;
  close(fd);
  return r == 0 ? absl::OkStatus() : ErrnoStatus(absl::StrCat("flushing ", path), err);
}

absl::Status WriteFileDurably(const std::string& path, absl::string_view bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(absl::StrCat("creating ", tmp), errno);
  absl::Status s = WriteAll(fd, bytes, tmp);
  if (s.ok() && fsync(fd) != 0) s = ErrnoStatus(absl::StrCat("flushing ", tmp), errno);
  if (close(fd) != 0 && s.ok()) s = ErrnoStatus(absl::StrCat("closing ", tmp), errno);
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    s = ErrnoStatus(absl::StrCat("moving ", tmp, " into place"), errno);
  }
  if (!s.ok()) {
    std::remove(tmp.c_str());
    return s;
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return SyncPath(dir.empty() ? "." : dir);
}

absl::Status AppendToFile(const std::string& path, absl::string_view bytes) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(absl::StrCat("opening ", path), errno);
  absl::Status s = WriteAll(fd, bytes, path);
  if (close(fd) != 0 && s.ok()) s = ErrnoStatus(absl::StrCat("closing ", path), errno);
  return s;
}

}  // namespace qsearch
