// Data loading: IDX (plain and gzipped), tensor archives, splits, and every bad-input path.
#include "search/data.h"

#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qsearch::search {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::vector<unsigned char> Idx(const std::vector<std::uint32_t>& shape, int fill_mod) {
  std::vector<unsigned char> b = {0, 0, 8, static_cast<unsigned char>(shape.size())};
  std::uint64_t count = 1;
  for (std::uint32_t d : shape) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(d >> s));
    count *= d;
  }
  for (std::uint64_t i = 0; i < count; ++i) b.push_back(static_cast<unsigned char>(i * 7 % fill_mod));
  return b;
}

void Write(const fs::path& p, const std::vector<unsigned char>& bytes, bool gzip) {
  if (gzip) {
    gzFile f = gzopen((p.string() + ".gz").c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
}

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qsearch_data_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void WriteMnist(bool gzip, std::uint32_t train = 40, std::uint32_t train_labels = 40) {
    Write(dir_ / "train-images-idx3-ubyte", Idx({train, 8, 8}, 256), gzip);
    Write(dir_ / "train-labels-idx1-ubyte", Idx({train_labels}, 10), gzip);
    Write(dir_ / "t10k-images-idx3-ubyte", Idx({20, 8, 8}, 256), gzip);
    Write(dir_ / "t10k-labels-idx1-ubyte", Idx({20}, 10), gzip);
  }
  v1::DatasetSpec Spec() {
    v1::DatasetSpec s;
    s.set_kind("mnist");
    s.set_path(dir_.string());
    s.set_val_size(8);
    s.set_seed(5);
    return s;
  }
  fs::path dir_;
};

TEST_F(DataTest, ReadsPlainAndGzippedIdxWithDeterministicSplits) {
  for (bool gzip : {false, true}) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    WriteMnist(gzip);
    auto d = LoadData(Spec());
    ASSERT_OK(d);
    EXPECT_EQ(d->train.size(), 32);
    EXPECT_EQ(d->val.size(), 8);
    EXPECT_EQ(d->test.size(), 20);
    EXPECT_EQ(d->classes, 10);
    EXPECT_EQ(d->train.images.sizes(), (c10::IntArrayRef{32, 1, 8, 8}));
    EXPECT_NEAR(d->train.images.mean().item<float>(), 0.0f, 1e-4);
    EXPECT_NEAR(d->train.images.std(false).item<float>(), 1.0f, 1e-3);
    auto again = LoadData(Spec());
    EXPECT_TRUE(at::equal(again->val.labels, d->val.labels));
  }
  auto raw = ReadIdx((dir_ / "t10k-labels-idx1-ubyte.gz").string());
  ASSERT_OK(raw);
  EXPECT_EQ((*raw)[3].item<std::int64_t>(), 21 % 10);
}

TEST(DataNormalisationTest, TheImagesDoNotDependOnTheThreadCount) {
  // The per-channel mean and std are sums over millions of pixels; summed in float32 they
  // came out differently with 1 and 2 threads (the threads split the sum; this test failed
  // so at 30000 and 59000 images), and every job on them trained along another path.
  // They are summed in float64 now.
  v1::DatasetSpec s;
  s.set_kind("fashion_mnist");
  s.set_train_size(30000);
  s.set_val_size(64);
  s.set_test_size(64);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  auto one = LoadData(s);
  at::set_num_threads(2);
  auto two = LoadData(s);
  at::set_num_threads(threads);
  ASSERT_OK(one);
  ASSERT_OK(two);
  EXPECT_EQ(one->mean, two->mean);
  EXPECT_EQ(one->std, two->std);
  EXPECT_TRUE(at::equal(one->train.images, two->train.images));
  EXPECT_NEAR(one->mean[0], 0.286, 0.01);  // Fashion-MNIST's
}

TEST_F(DataTest, BadFilesGiveClearErrors) {
  v1::DatasetSpec missing = Spec();
  missing.set_path((dir_ / "nope").string());
  EXPECT_EQ(LoadData(missing).status().code(), absl::StatusCode::kNotFound);

  WriteMnist(false, 40, 39);  // one label short
  auto mismatch = LoadData(Spec());
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mismatch.status().message()), HasSubstr("40 images but 39 labels"));

  auto bytes = Idx({40, 8, 8}, 256);
  bytes.resize(bytes.size() - 10);
  Write(dir_ / "train-images-idx3-ubyte", bytes, false);
  EXPECT_THAT(std::string(LoadData(Spec()).status().message()), HasSubstr("truncated"));

  bytes = Idx({40, 8, 8}, 256);
  bytes[2] = 0x0D;  // float IDX: not supported
  Write(dir_ / "train-images-idx3-ubyte", bytes, false);
  EXPECT_THAT(std::string(LoadData(Spec()).status().message()), HasSubstr("bad magic"));

  std::ofstream(dir_ / "broken.gz") << "\x1f\x8b garbage that is not deflate";
  EXPECT_FALSE(ReadIdx((dir_ / "broken.gz").string()).ok());

  WriteMnist(false);
  v1::DatasetSpec big = Spec();
  big.set_train_size(1000);
  EXPECT_THAT(std::string(LoadData(big).status().message()), HasSubstr("larger than"));
  v1::DatasetSpec kind = Spec();
  kind.set_kind("imagenet");
  EXPECT_THAT(std::string(LoadData(kind).status().message()), HasSubstr("unknown dataset kind"));
}

TEST_F(DataTest, TensorArchiveRoundTripAndErrors) {
  TensorDataset d{at::randn({60, 3, 8, 8}), at::randint(0, 4, {60}, at::kLong)};
  const std::string path = (dir_ / "data.pt").string();
  ASSERT_OK(WriteTensorArchive(path, d));
  v1::DatasetSpec s;
  s.set_kind("archive");
  s.set_path(path);
  auto loaded = LoadData(s);
  ASSERT_OK(loaded);
  EXPECT_EQ(loaded->channels, 3);
  EXPECT_EQ(loaded->test.size(), 10);
  EXPECT_EQ(loaded->train.size() + loaded->val.size(), 50);

  d.images[3][0][0][0] = NAN;
  ASSERT_OK(WriteTensorArchive(path, d));
  EXPECT_THAT(std::string(LoadData(s).status().message()), HasSubstr("NaN"));

  std::ofstream(path) << "definitely not a pickle";
  auto bad = LoadData(s);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("not a tensor archive"));

  TensorDataset wrong{at::randn({10, 64}), at::zeros({10}, at::kLong)};
  ASSERT_OK(WriteTensorArchive(path, wrong));
  EXPECT_THAT(std::string(LoadData(s).status().message()), HasSubstr("float [N, C, H, W]"));

  // What users have at hand: uint8 pixels of grey [N, H, W] images, scaled to [0, 1].
  TensorDataset grey{at::randint(0, 256, {60, 8, 8}, at::kLong).to(at::kByte), at::arange(60, at::kLong) % 3};
  ASSERT_OK(WriteTensorArchive(path, grey));
  s.add_mean(0);
  s.add_std(1);
  ASSERT_OK_AND_ASSIGN(DataSplits raw, LoadData(s));
  EXPECT_EQ(raw.channels, 1);
  EXPECT_LE(raw.train.images.max().item<float>(), 1.0f);
  EXPECT_EQ(raw.mean, std::vector<double>({0.0}));

  // A file from torch.save's legacy format is a bare pickle, not a zip.
  std::ofstream(path, std::ios::binary) << "\x80\x02" << "cpickled bytes";
  EXPECT_THAT(std::string(LoadData(s).status().message()), HasSubstr("legacy (non-zip) format"));
}

TEST_F(DataTest, Cifar10BinaryBatchesLoadWithPixelsAndLabelsInPlace) {
  // Five training batches of 4 records and a test batch of 6, in the CIFAR-10 binary
  // layout: a label byte, then 1024 red, 1024 green and 1024 blue bytes.
  auto batch = [](int records, int first) {
    std::vector<unsigned char> b;
    for (int r = 0; r < records; ++r) {
      b.push_back(static_cast<unsigned char>((first + r) % 10));
      for (int c = 0; c < 3; ++c) {
        // Red varies along a row (period 7), green from row to row, blue not at all.
        for (int p = 0; p < 1024; ++p) {
          const int v = c == 0 ? p % 7 * 20 : c == 1 ? p / 32 % 5 * 30 : first + r;
          b.push_back(static_cast<unsigned char>(v));
        }
      }
    }
    return b;
  };
  for (int i = 1; i <= 5; ++i) Write(dir_ / ("data_batch_" + std::to_string(i) + ".bin"), batch(4, 4 * (i - 1)), false);
  Write(dir_ / "test_batch.bin", batch(6, 40), false);
  v1::DatasetSpec s;
  s.set_kind("cifar10");
  s.set_path(dir_.string());
  s.set_val_size(5);
  ASSERT_OK_AND_ASSIGN(DataSplits d, LoadData(s));
  EXPECT_EQ(d.channels, 3);
  EXPECT_EQ(d.height, 32);
  EXPECT_EQ(d.classes, 10);
  EXPECT_EQ(d.train.size() + d.val.size(), 20);
  EXPECT_EQ(d.val.size(), 5);
  ASSERT_EQ(d.test.size(), 6);
  // Test records 40..45 carry labels 0..5, in whatever order the split keeps them.
  EXPECT_TRUE(std::get<0>(d.test.labels.sort()).equal(at::arange(6, at::kLong)));
  // Planes are channel-major and row-major: each keeps its own pattern.
  const at::Tensor red = d.test.images[0][0], green = d.test.images[0][1];
  EXPECT_FLOAT_EQ(red[0][0].item<float>(), red[0][7].item<float>());
  EXPECT_NE(red[0][0].item<float>(), red[0][1].item<float>());
  EXPECT_FLOAT_EQ(green[0][0].item<float>(), green[0][31].item<float>());
  EXPECT_NE(green[0][0].item<float>(), green[1][0].item<float>());

  // A truncated batch is refused with the record size in the message.
  std::vector<unsigned char> cut = batch(4, 0);
  cut.resize(cut.size() - 100);
  Write(dir_ / "data_batch_3.bin", cut, false);
  auto bad = LoadData(s);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("3073-byte CIFAR-10 records"));
  fs::remove(dir_ / "data_batch_3.bin");
  EXPECT_EQ(LoadData(s).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qsearch::search
