// Image folders: PNG and JPEG decoding (pixels as written), the two folder layouts, class
// order, resizing, every bad input; and train-time augmentation.
#include "search/image_folder.h"

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "search/data.h"
#include "search/testing/test_files.h"
#include "tests/test_util.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

using ::qsearch::search::testing::ArchiveOf;
using ::qsearch::search::testing::EncodeJpeg;
using ::qsearch::search::testing::EncodePng;

void WriteFile(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

at::Tensor Pixels(std::int64_t c, std::int64_t h, std::int64_t w, int seed) {
  at::manual_seed(seed);
  return at::randint(0, 256, {c, h, w}, at::kLong).to(at::kByte);
}

TEST(ImageFolderTest, DecodesPngExactlyAndJpegClosely) {
  const at::Tensor rgb = Pixels(3, 5, 7, 1);
  ASSERT_OK_AND_ASSIGN(at::Tensor png, DecodeImage(EncodePng(rgb), 0));
  EXPECT_TRUE(png.equal(rgb));
  const at::Tensor grey = Pixels(1, 4, 6, 2);
  ASSERT_OK_AND_ASSIGN(at::Tensor g, DecodeImage(EncodePng(grey), 0));
  EXPECT_TRUE(g.equal(grey));
  // Grey to RGB repeats the channel.
  ASSERT_OK_AND_ASSIGN(at::Tensor g3, DecodeImage(EncodePng(grey), 3));
  EXPECT_TRUE(g3.equal(grey.repeat({3, 1, 1})));
  // A smooth JPEG at quality 100 comes back within a few levels.
  const at::Tensor smooth = (at::arange(64).reshape({1, 8, 8}).repeat({3, 1, 1}) * 3).to(at::kByte);
  ASSERT_OK_AND_ASSIGN(at::Tensor jpeg, DecodeImage(EncodeJpeg(smooth), 0));
  ASSERT_EQ(jpeg.sizes(), smooth.sizes());
  EXPECT_LE((jpeg.to(at::kInt) - smooth.to(at::kInt)).abs().max().item<int>(), 4);

  EXPECT_THAT(DecodeImage("GIF89a....", 0).status().message(), HasSubstr("not a PNG or JPEG"));
  std::string broken = EncodePng(rgb);
  broken.resize(broken.size() / 2);
  EXPECT_EQ(DecodeImage(broken, 0).status().code(), absl::StatusCode::kInvalidArgument);
  std::string jpeg_broken = EncodeJpeg(smooth).substr(0, 40);
  EXPECT_THAT(DecodeImage(jpeg_broken, 0).status().message(), HasSubstr("corrupt JPEG"));
  EXPECT_THAT(DecodeImage(EncodePng(rgb), 2).status().message(), HasSubstr("channels must be 1 or 3"));
}

TEST(ImageFolderTest, ClassFoldersSplitsAndResizing) {
  const fs::path root = ::qsearch::testing::FreshDir("qsearch_image_folder");
  // Without train/ and test/: the last sixth of each class (in name order) is the test split.
  for (int i = 0; i < 12; ++i) {
    WriteFile(root / "flat" / "zebra" / absl::StrCat("z", i, ".png"), EncodePng(Pixels(1, 6, 6, i)));
    WriteFile(root / "flat" / "apple" / absl::StrCat("a", i, ".PNG"), EncodePng(Pixels(1, 6, 6, 100 + i)));
  }
  WriteFile(root / "flat" / "apple" / "notes.txt", "not an image");
  WriteFile(root / "flat" / ".hidden" / "x.png", EncodePng(Pixels(1, 6, 6, 0)));
  ASSERT_OK_AND_ASSIGN(ImageFolder flat, LoadImageFolder((root / "flat").string(), {}));
  EXPECT_EQ(flat.classes, std::vector<std::string>({"apple", "zebra"}));
  EXPECT_EQ(flat.train_images.sizes(), at::IntArrayRef({20, 1, 6, 6}));
  EXPECT_EQ(flat.test_images.size(0), 4);
  EXPECT_EQ(flat.test_labels.sum().item<std::int64_t>(), 2);  // two of each class
  // The last apple file in name order ("a9.PNG") is a test image, as decoded, in [0, 1].
  EXPECT_TRUE(flat.test_images[1].mul(255).round().to(at::kByte).equal(Pixels(1, 6, 6, 109)));

  // train/ and test/ folders, RGB, resized on request.
  for (int i = 0; i < 3; ++i) {
    for (const char* cls : {"cat", "dog"}) {
      WriteFile(root / "split" / "train" / cls / absl::StrCat(i, ".jpg"), EncodeJpeg(Pixels(3, 16, 16, i)));
      WriteFile(root / "split" / "test" / cls / absl::StrCat(i, ".png"), EncodePng(Pixels(3, 16, 16, 50 + i)));
    }
  }
  ImageFolderOptions options;
  options.height = 8;
  options.width = 12;
  options.channels = 1;
  ASSERT_OK_AND_ASSIGN(ImageFolder split, LoadImageFolder((root / "split").string(), options));
  EXPECT_EQ(split.train_images.sizes(), at::IntArrayRef({6, 1, 8, 12}));
  EXPECT_EQ(split.test_images.sizes(), at::IntArrayRef({6, 1, 8, 12}));
  EXPECT_GE(split.train_images.min().item<float>(), 0.0f);
  EXPECT_LE(split.train_images.max().item<float>(), 1.0f);

  // Errors name the folder or the file.
  EXPECT_EQ(LoadImageFolder((root / "missing").string(), {}).status().code(), absl::StatusCode::kNotFound);
  WriteFile(root / "one" / "only" / "x.png", EncodePng(Pixels(1, 4, 4, 0)));
  EXPECT_THAT(LoadImageFolder((root / "one").string(), {}).status().message(), HasSubstr("at least 2"));
  WriteFile(root / "split" / "train" / "dog" / "9.png", "PNG? no");
  auto bad = LoadImageFolder((root / "split").string(), options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("dog/9.png"));
  fs::remove(root / "split" / "train" / "dog" / "9.png");
  WriteFile(root / "split" / "test" / "bird" / "0.png", EncodePng(Pixels(3, 16, 16, 0)));
  EXPECT_THAT(LoadImageFolder((root / "split").string(), options).status().message(),
              HasSubstr("a class train/ does not have"));
}

TEST(ImageFolderTest, ZipAndTarFilesOfAFolderReadLikeTheFolder) {
  // What zipping a folder on a desktop gives: a top folder, macOS resource forks, hidden
  // files, a stray text file.
  std::vector<std::pair<std::string, std::string>> files;
  for (int i = 0; i < 4; ++i) {
    files.push_back({absl::StrCat("pets/train/dog/", i, ".png"), EncodePng(Pixels(3, 8, 8, i))});
    files.push_back({absl::StrCat("pets/train/cat/", i, ".jpeg"), EncodeJpeg(Pixels(3, 8, 8, 10 + i))});
  }
  files.push_back({"pets/test/cat/t.png", EncodePng(Pixels(3, 8, 8, 20))});
  files.push_back({"pets/test/dog/t.png", EncodePng(Pixels(3, 8, 8, 21))});
  files.push_back({"__MACOSX/pets/train/dog/._0.png", "resource fork"});
  files.push_back({"pets/train/dog/.DS_Store", "finder"});
  files.push_back({"pets/README.txt", "about these pets"});
  const fs::path dir = ::qsearch::testing::FreshDir("qsearch_image_archive");
  for (const char* format : {"zip", "tar", "tar.gz"}) {
    const fs::path path = dir / absl::StrCat("pets.", format);
    WriteFile(path, ArchiveOf(files, format));
    ASSERT_OK_AND_ASSIGN(ImageFolder f, LoadImageFolder(path.string(), {}));
    EXPECT_EQ(f.classes, std::vector<std::string>({"cat", "dog"})) << format;
    EXPECT_EQ(f.train_images.sizes(), at::IntArrayRef({8, 3, 8, 8})) << format;
    EXPECT_TRUE(f.test_labels.equal(at::tensor(std::vector<std::int64_t>{0, 1}))) << format;
    EXPECT_TRUE(f.test_images[1].mul(255).round().to(at::kByte).equal(Pixels(3, 8, 8, 21))) << format;
  }
  // Flat class folders with no top folder; the last sixth of each class is its test split.
  std::vector<std::pair<std::string, std::string>> flat;
  for (int i = 0; i < 6; ++i) {
    flat.push_back({absl::StrCat("a/", i, ".png"), EncodePng(Pixels(1, 4, 4, i))});
    flat.push_back({absl::StrCat("b/", i, ".png"), EncodePng(Pixels(1, 4, 4, 50 + i))});
  }
  WriteFile(dir / "flat.tar", ArchiveOf(flat, "tar"));
  ASSERT_OK_AND_ASSIGN(ImageFolder f, LoadImageFolder((dir / "flat.tar").string(), {}));
  EXPECT_EQ(f.train_images.size(0), 10);
  EXPECT_EQ(f.test_images.size(0), 2);

  // What an archive may not do: climb out, hide images outside class folders, be junk.
  WriteFile(dir / "climb.tar", ArchiveOf({{"a/0.png", flat[0].second}, {"../../etc/x.png", flat[1].second}}, "tar"));
  EXPECT_THAT(LoadImageFolder((dir / "climb.tar").string(), {}).status().message(), HasSubstr("climbs out"));
  WriteFile(dir / "loose.zip", ArchiveOf({{"a/0.png", flat[0].second}, {"b/1.png", flat[1].second},
                                          {"loose.png", flat[2].second}}, "zip"));
  EXPECT_THAT(LoadImageFolder((dir / "loose.zip").string(), {}).status().message(),
              HasSubstr("loose.png is not in a class folder"));
  WriteFile(dir / "junk.zip", "PK but not really a zip");
  EXPECT_EQ(LoadImageFolder((dir / "junk.zip").string(), {}).status().code(), absl::StatusCode::kInvalidArgument);
  ImageFolderOptions few;
  few.max_images = 5;
  EXPECT_THAT(LoadImageFolder((dir / "flat.tar").string(), few).status().message(), HasSubstr("more than 5 images"));
}

TEST(ImageFolderTest, AugmentationCropsWithBlackPaddingAndFlips) {
  DataSplits data;
  data.height = data.width = 8;
  data.mean = {0.5};
  data.std = {0.25};
  v1::DatasetSpec spec;
  spec.set_augment("crop");
  Augmentation crop = AugmentationFor(spec, data);
  EXPECT_TRUE(crop.crop);
  EXPECT_FALSE(crop.flip);
  EXPECT_EQ(crop.padding, 1);
  const at::Tensor x = at::rand({64, 1, 8, 8}) + 5;  // every pixel differs from the fill
  at::manual_seed(7);
  const at::Tensor a = Augment(x, crop);
  at::manual_seed(7);
  EXPECT_TRUE(Augment(x, crop).equal(a));  // the same seed draws the same crops
  EXPECT_EQ(a.sizes(), x.sizes());
  // Padding is black after normalisation: (0 - 0.5) / 0.25.
  const at::Tensor padded = a.eq(-2.0f);
  EXPECT_GT(padded.sum().item<std::int64_t>(), 0);
  EXPECT_TRUE(at::logical_or(padded, a.ge(5)).all().item<bool>());
  // Each crop is the image shifted by at most the padding.
  for (std::int64_t i = 0; i < 64; ++i) {
    bool found = false;
    for (std::int64_t dy = -1; dy <= 1 && !found; ++dy) {
      for (std::int64_t dx = -1; dx <= 1 && !found; ++dx) {
        const at::Tensor inner = a[i].slice(1, 1, 7).slice(2, 1, 7);
        found = inner.equal(x[i].slice(1, 1 + dy, 7 + dy).slice(2, 1 + dx, 7 + dx));
      }
    }
    EXPECT_TRUE(found) << i;
  }
  spec.set_augment("flip");
  const at::Tensor f = Augment(x, AugmentationFor(spec, data));
  int flipped = 0;
  for (std::int64_t i = 0; i < 64; ++i) {
    if (f[i].equal(x[i].flip({2}))) {
      ++flipped;
    } else {
      EXPECT_TRUE(f[i].equal(x[i]));
    }
  }
  EXPECT_GT(flipped, 10);
  EXPECT_LT(flipped, 54);
  spec.set_augment("none");
  const Augmentation none = AugmentationFor(spec, data);
  EXPECT_FALSE(none.crop || none.flip);
}

}  // namespace
}  // namespace qsearch::search
