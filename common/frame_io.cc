// Frame writing and reading with plain read(2) / write(2).
#include "common/frame_io.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace qsearch {

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message) {
  std::string frame(4, '\0');
  const std::size_t size = message.ByteSizeLong();
  if (size > 0xffffffffu) return absl::InvalidArgumentError("message too large for a frame");
  for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  if (!message.AppendToString(&frame)) return absl::InternalError("message does not serialise");
  std::size_t done = 0;
  while (done < frame.size()) {
    const ssize_t n = write(fd, frame.data() + done, frame.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      if (err == EPIPE) return absl::UnavailableError("the channel's reader has gone");
      return absl::InternalError(absl::StrCat("cannot write to the channel: ", std::strerror(err)));
    }
    done += static_cast<std::size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::size_t> FrameReader::ReadFully(char* buffer, std::size_t n) {
  std::size_t done = 0;
  while (done < n) {
    if (before_read_) {
      if (absl::Status s = before_read_(); !s.ok()) return s;
    }
    const ssize_t got = read(fd_, buffer + done, n - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    done += static_cast<std::size_t>(got);
  }
  return done;
}

absl::StatusOr<bool> FrameReader::Next(google::protobuf::MessageLite* message) {
  unsigned char header[4];
  absl::StatusOr<std::size_t> read = ReadFully(reinterpret_cast<char*>(header), 4);
  if (!read.ok()) return read.status();
  const std::size_t got = *read;
  if (got == 0) return false;
  if (got < 4) return absl::DataLossError("the channel ended inside a frame header");
  const std::size_t size = std::size_t{header[0]} | (std::size_t{header[1]} << 8) | (std::size_t{header[2]} << 16) |
                           (std::size_t{header[3]} << 24);
  if (size > max_) {
    return absl::ResourceExhaustedError(absl::StrCat("a frame of ", size, " bytes; at most ", max_, " are accepted"));
  }
  std::string body(size, '\0');
  read = ReadFully(body.data(), size);
  if (!read.ok()) return read.status();
  if (*read < size) return absl::DataLossError("the channel ended inside a frame");
  if (!message->ParseFromString(body)) return absl::DataLossError("a frame does not parse");
  return true;
}

}  // namespace qsearch
