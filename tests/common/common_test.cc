// Shared helpers: length-prefixed frames through a real pipe (and what a broken or hostile
// writer sends), deterministic JSON, JSON quoting, the artifact table.
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/artifacts.h"
#include "common/frame_io.h"
#include "common/json.h"
#include "qsearch/internal/worker.pb.h"
#include "tests/test_util.h"

namespace qsearch {
namespace {

using ::testing::HasSubstr;

struct Pipe {
  Pipe() { EXPECT_EQ(pipe(fd), 0); }
  ~Pipe() {
    CloseWrite();
    close(fd[0]);
  }
  void CloseWrite() {
    if (fd[1] >= 0) close(fd[1]);
    fd[1] = -1;
  }
  int fd[2] = {-1, -1};
};

TEST(FrameTest, MessagesArriveWholeAndInOrder) {
  Pipe p;
  for (int i = 1; i <= 3; ++i) {
    internal::WorkerMessage m;
    m.mutable_event()->set_sequence(i);
    m.mutable_event()->set_message(std::string(static_cast<size_t>(i) * 1000, 'e'));
    ASSERT_OK(WriteFrame(p.fd[1], m));
  }
  p.CloseWrite();
  FrameReader reader(p.fd[0], 1 << 20);
  internal::WorkerMessage m;
  for (int i = 1; i <= 3; ++i) {
    ASSERT_OK_AND_ASSIGN(bool more, reader.Next(&m));
    ASSERT_TRUE(more);
    EXPECT_EQ(m.event().sequence(), i);
    EXPECT_EQ(m.event().message().size(), static_cast<size_t>(i) * 1000);
  }
  ASSERT_OK_AND_ASSIGN(bool more, reader.Next(&m));
  EXPECT_FALSE(more);  // a clean end
}

TEST(FrameTest, OversizedCutShortAndGarbageFramesAreRefused) {
  internal::WorkerMessage m;
  {
    Pipe p;
    const char huge[4] = {'\xff', '\xff', '\xff', '\x7f'};
    ASSERT_EQ(write(p.fd[1], huge, 4), 4);
    FrameReader reader(p.fd[0], 1 << 20);
    EXPECT_EQ(reader.Next(&m).status().code(), absl::StatusCode::kResourceExhausted);
  }
  {
    Pipe p;
    const char header[6] = {10, 0, 0, 0, 'a', 'b'};
    ASSERT_EQ(write(p.fd[1], header, 6), 6);
    p.CloseWrite();
    FrameReader reader(p.fd[0], 1 << 20);
    EXPECT_EQ(reader.Next(&m).status().code(), absl::StatusCode::kDataLoss);
  }
  {
    Pipe p;
    const char junk[7] = {3, 0, 0, 0, '\xff', '\xff', '\xff'};
    ASSERT_EQ(write(p.fd[1], junk, 7), 7);
    FrameReader reader(p.fd[0], 1 << 20);
    EXPECT_THAT(std::string(reader.Next(&m).status().message()), HasSubstr("does not parse"));
  }
  {
    Pipe p;
    ASSERT_EQ(write(p.fd[1], "\x01\x00", 2), 2);
    p.CloseWrite();
    FrameReader reader(p.fd[0], 1 << 20);
    EXPECT_EQ(reader.Next(&m).status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST(JsonTest, MapsPrintInTheSameOrderWhateverTheirHistory) {
  v1::QuantizerSpec a, b;
  for (const char* k : {"bits", "granularity", "k", "group_size", "symmetric"}) (*a.mutable_params())[k] = "1";
  for (const char* k : {"symmetric", "k", "group_size", "bits", "granularity"}) (*b.mutable_params())[k] = "1";
  b.ParseFromString(b.SerializeAsString());  // as a checkpoint round trip leaves it
  ASSERT_OK_AND_ASSIGN(std::string ja, ToJson(a, false));
  ASSERT_OK_AND_ASSIGN(std::string jb, ToJson(b, true));
  ASSERT_OK_AND_ASSIGN(std::string jb_compact, ToJson(b, false));
  EXPECT_EQ(ja, jb_compact);
  EXPECT_EQ(ja, R"({"params":{"bits":"1","granularity":"1","group_size":"1","k":"1","symmetric":"1"}})");
  EXPECT_THAT(jb, HasSubstr("\n"));
  EXPECT_EQ(JsonQuote("a\"b\\c\nd\x01"), R"("a\"b\\c\nd\u0001")");
}

TEST(ArtifactsTest, OneTableNamesEveryKind) {
  ASSERT_NE(FindArtifactKind("checkpoint"), nullptr);
  EXPECT_STREQ(FindArtifactKind("checkpoint")->file, "quantized.pt");
  EXPECT_EQ(FindArtifactKind("weights"), nullptr);
  EXPECT_EQ(ArtifactKindList(), "policy, config_list, checkpoint, result or torchscript");
}

}  // namespace
}  // namespace qsearch
