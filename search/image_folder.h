// Image-folder data sets, the way most PyTorch users hold their images (torchvision's
// ImageFolder layout): one sub-folder per class, named as the class, holding PNG or JPEG
// files. Classes are the sub-folder names in sorted order (label i = i-th name). With
// `train/` and `test/` (or `val/`) sub-folders those are the splits; otherwise the last
// sixth of each class's files (in name order) is the test split. The folder may also come
// as a zip or tar file (how it travels through an upload): it is read in memory, never
// extracted, and a single top folder holding everything is looked through.
//
// Images are decoded with libpng / libjpeg-turbo, converted to the requested channels
// (1 = grey, 3 = RGB; an alpha channel is composited onto black), resized with an
// antialiased bilinear filter and scaled to [0, 1]; decoding runs on LibTorch's intra-op
// threads. Everything is decoded once, at load: augmentation (data.h) works on tensors.
#ifndef QSEARCH_SEARCH_IMAGE_FOLDER_H_
#define QSEARCH_SEARCH_IMAGE_FOLDER_H_

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace qsearch::search {

struct ImageFolderOptions {
  // Output size and channels; 0 = the first image's.
  int height = 0, width = 0, channels = 0;
  // Refuse folders with more images than this (each is decoded into memory), and
  // archives whose image files add up to more bytes.
  std::int64_t max_images = 2'000'000;
  std::int64_t max_bytes = std::int64_t{16} << 30;
};

struct ImageFolder {
  at::Tensor train_images, train_labels;  // float [N, C, H, W] in [0, 1]; int64 [N]
  at::Tensor test_images, test_labels;
  std::vector<std::string> classes;
};

// NotFound when `root` does not exist; InvalidArgument naming the file for an
// undecodable image, and for a folder (or archive) without classes or images.
absl::StatusOr<ImageFolder> LoadImageFolder(const std::string& root, const ImageFolderOptions& options);

// Decodes a PNG or JPEG file's bytes into uint8 [C, H, W] with `channels` channels
// (0: the file's own, grey -> 1, colour -> 3). InvalidArgument for other formats and
// corrupt data.
absl::StatusOr<at::Tensor> DecodeImage(const std::string& bytes, int channels);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_IMAGE_FOLDER_H_
