// Data-loading throughput: an image folder (PNG or JPEG files decoded, converted and
// resized) against the same images in a tensor archive, and train-time augmentation.
// Fashion-MNIST images, written out as files first; prints images/s per loader.
//
//   build/bench/data_bench [images] [threads]      (default 10000 images, 2 threads)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "search/data.h"
#include "search/testing/test_files.h"

namespace {

namespace fs = std::filesystem;
using namespace qsearch::search;  // NOLINT: a benchmark's main

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Median of `runs` timings of fn().
template <typename Fn>
double MedianSeconds(int runs, Fn&& fn) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(Seconds(start));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void Row(const char* what, std::int64_t images, double seconds) {
  std::printf("| %-58s | %8lld | %8.3f | %10.0f |\n", what, static_cast<long long>(images), seconds, images / seconds);
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t n = argc > 1 ? std::atoll(argv[1]) : 10000;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  at::set_num_threads(threads);
  auto images = ReadIdx(std::string(kDefaultFashionMnistDir) + "/train-images-idx3-ubyte.gz");
  auto labels = ReadIdx(std::string(kDefaultFashionMnistDir) + "/train-labels-idx1-ubyte.gz");
  if (!images.ok() || !labels.ok()) {
    std::fprintf(stderr, "data_bench: cannot read Fashion-MNIST from %s\n", kDefaultFashionMnistDir);
    return 1;
  }
  const at::Tensor pixels = images->slice(0, 0, n).mul(255).round().to(at::kByte);  // [n, 1, 28, 28]
  const at::Tensor y = labels->slice(0, 0, n);
  const fs::path root = fs::temp_directory_path() / absl::StrCat("qsearch_data_bench_", getpid());
  fs::remove_all(root);
  for (const char* format : {"png", "jpg"}) {
    for (std::int64_t i = 0; i < n; ++i) {
      const fs::path dir = root / format / absl::StrCat("class", y[i].item<std::int64_t>());
      fs::create_directories(dir);
      const at::Tensor rgb = pixels[i].repeat({3, 1, 1});  // colour files, as most photos are
      std::ofstream(dir / absl::StrCat(i, ".", format), std::ios::binary)
          << (format[0] == 'p' ? testing::EncodePng(rgb) : testing::EncodeJpeg(rgb, 90));
    }
  }
  // The same images as a user's tensor archive: uint8 [N, 3, 28, 28].
  const std::string archive = (root / "data.pt").string();
  (void)WriteTensorArchive(archive, {pixels.repeat({1, 3, 1, 1}), y});

  std::printf("%lld Fashion-MNIST images (RGB files, 28x28), %d threads, median of 3 loads\n\n",
              static_cast<long long>(n), threads);
  std::printf("| %-58s | %8s | %8s | %10s |\n|---|---:|---:|---:|\n", "loader (LoadData, whole data set)", "images",
              "seconds", "images/s");
  const auto load = [&](qsearch::v1::DatasetSpec spec) {
    const double s = MedianSeconds(3, [&] {
      auto d = LoadData(spec);
      if (!d.ok()) {
        std::fprintf(stderr, "data_bench: %s\n", d.status().ToString().c_str());
        std::exit(1);
      }
    });
    return s;
  };
  qsearch::v1::DatasetSpec spec;
  spec.set_kind("archive");
  spec.set_path(archive);
  Row("tensor archive (uint8)", n, load(spec));
  for (const char* format : {"png", "jpg"}) {
    spec.set_kind("image_folder");
    spec.set_path((root / format).string());
    spec.set_height(0);
    spec.set_width(0);
    Row(absl::StrCat("image folder, ", format, ", 3x28x28 as stored").c_str(), n, load(spec));
    spec.set_height(32);
    spec.set_width(32);
    Row(absl::StrCat("image folder, ", format, ", resized to 3x32x32").c_str(), n, load(spec));
  }

  // Augmentation of training batches (128 images, 3x32x32), as an epoch does it.
  spec.set_kind("image_folder");
  spec.set_path((root / "png").string());
  spec.set_augment("crop_flip");
  auto data = LoadData(spec);
  if (!data.ok()) return 1;
  const Augmentation aug = AugmentationFor(spec, *data);
  const at::Tensor& train = data->train.images;
  const std::int64_t batches = train.size(0) / 128;
  const double seconds = MedianSeconds(3, [&] {
    for (std::int64_t b = 0; b < batches; ++b) (void)Augment(train.slice(0, b * 128, (b + 1) * 128), aug);
  });
  std::printf("\n| %-58s | %8s | %8s | %10s |\n|---|---:|---:|---:|\n", "augmentation (per epoch)", "images", "seconds",
              "images/s");
  Row("random crop (pad 4) + horizontal flip, batches of 128", batches * 128, seconds);
  fs::remove_all(root);
  return 0;
}
