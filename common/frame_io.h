// Length-prefixed protobuf frames on a file descriptor (a pipe between a worker and the
// server): a 4-byte little-endian length, then that many bytes of one message. Blocking;
// one writer and one reader per descriptor.
#ifndef QSEARCH_COMMON_FRAME_IO_H_
#define QSEARCH_COMMON_FRAME_IO_H_

#include <cstddef>
#include <functional>

#include <google/protobuf/message_lite.h>

#include "absl/status/statusor.h"

namespace qsearch {

// Writes one whole frame (retrying short writes and EINTR). Unavailable when the reader
// has gone (EPIPE), Internal for other errors.
absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message);

class FrameReader {
 public:
  // Frames longer than `max_frame_bytes` are refused before being read. `before_read`,
  // when set, runs before every read(2) (e.g. waiting with a deadline); an error from it
  // ends Next() with that error.
  FrameReader(int fd, std::size_t max_frame_bytes, std::function<absl::Status()> before_read = nullptr)
      : fd_(fd), max_(max_frame_bytes), before_read_(std::move(before_read)) {}

  // The next frame into `message`: true when one was read, false at a clean end of the
  // stream (no byte of a new frame). DataLoss for a frame cut short or that does not
  // parse; ResourceExhausted for one over the limit (the stream is then unusable).
  absl::StatusOr<bool> Next(google::protobuf::MessageLite* message);

 private:
  // Reads exactly `n` bytes; the count read when the stream ends first.
  absl::StatusOr<std::size_t> ReadFully(char* buffer, std::size_t n);

  int fd_;
  std::size_t max_;
  std::function<absl::Status()> before_read_;
};

}  // namespace qsearch

#endif  // QSEARCH_COMMON_FRAME_IO_H_
