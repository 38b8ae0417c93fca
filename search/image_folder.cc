// Image folders: directory walk, PNG (libpng's simplified API) and JPEG (libjpeg-turbo)
// decoding, resizing, and the train/test split.
#include "search/image_folder.h"

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>

// libjpeg's header needs FILE and size_t declared first.
#include <jpeglib.h>
#include <png.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"

namespace qsearch::search {
namespace {

namespace fs = std::filesystem;

// Larger images are refused before any pixel is decoded (a few bytes of header can
// promise gigabytes).
constexpr std::int64_t kMaxPixels = std::int64_t{1} << 26;

absl::Status CheckDimensions(std::int64_t width, std::int64_t height) {
  if (width <= 0 || height <= 0 || width * height > kMaxPixels) {
    return absl::InvalidArgumentError(absl::StrCat("image of ", width, "x", height,
                                                   " pixels (at most ", kMaxPixels, " pixels are accepted)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> DecodePng(const std::string& bytes, int channels) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, bytes.data(), bytes.size())) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt PNG: ", image.message));
  }
  if (absl::Status s = CheckDimensions(image.width, image.height); !s.ok()) {
    png_image_free(&image);
    return s;
  }
  const int c = channels != 0 ? channels : (image.format & PNG_FORMAT_FLAG_COLOR) != 0 ? 3 : 1;
  image.format = c == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  at::Tensor out = at::empty({image.height, image.width, c}, at::kByte);
  const png_color black{0, 0, 0};
  if (!png_image_finish_read(&image, &black, out.data_ptr(), 0, nullptr)) {
    const std::string why = image.message;
    png_image_free(&image);
    return absl::InvalidArgumentError(absl::StrCat("corrupt PNG: ", why));
  }
  return out.permute({2, 0, 1}).contiguous();
}

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void OnJpegError(j_common_ptr info) {
  auto* e = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, e->message);
  std::longjmp(e->jump, 1);
}

// libjpeg reports errors by longjmp, so nothing with a destructor lives between setjmp
// and the end of decoding: pixels go to a malloc'd buffer handed to a tensor at the end.
absl::StatusOr<at::Tensor> DecodeJpeg(const std::string& bytes, int channels) {
  jpeg_decompress_struct info;
  JpegError error;
  info.err = jpeg_std_error(&error.mgr);
  error.mgr.error_exit = OnJpegError;
  error.mgr.output_message = [](j_common_ptr) {};  // warnings about minor damage: decode anyway
  unsigned char* volatile pixels = nullptr;
  if (setjmp(error.jump) != 0) {
    jpeg_destroy_decompress(&info);
    std::free(pixels);
    return absl::InvalidArgumentError(absl::StrCat("corrupt JPEG: ", error.message));
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&info, TRUE);
  const int c = channels != 0 ? channels : info.num_components == 1 ? 1 : 3;
  info.out_color_space = c == 1 ? JCS_GRAYSCALE : JCS_RGB;
  if (!CheckDimensions(info.image_width, info.image_height).ok()) {
    std::snprintf(error.message, sizeof(error.message), "image of %ux%u pixels is too large", info.image_width,
                  info.image_height);
    std::longjmp(error.jump, 1);
  }
  jpeg_start_decompress(&info);
  const std::size_t row = static_cast<std::size_t>(info.output_width) * info.output_components;
  pixels = static_cast<unsigned char*>(std::malloc(row * info.output_height));
  while (info.output_scanline < info.output_height) {
    JSAMPROW line = pixels + row * info.output_scanline;
    jpeg_read_scanlines(&info, &line, 1);
  }
  const std::int64_t h = info.output_height, w = info.output_width, got = info.output_components;
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  at::Tensor out = at::from_blob(pixels, {h, w, got}, [](void* p) { std::free(p); }, at::kByte);
  return out.permute({2, 0, 1}).contiguous();
}

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool IsImageFile(const fs::directory_entry& e) {
  const std::string name = e.path().filename().string();
  if (name.empty() || name[0] == '.') return false;
  const std::string ext = absl::AsciiStrToLower(e.path().extension().string());
  std::error_code ec;
  return (ext == ".png" || ext == ".jpg" || ext == ".jpeg") && e.is_regular_file(ec);
}

// Sorted names of the visible sub-directories of `dir`.
std::vector<std::string> SubDirectories(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code dir_ec;
    if (!name.empty() && name[0] != '.' && it->is_directory(dir_ec)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct FileList {
  std::vector<fs::path> files;
  std::vector<std::int64_t> labels;
};

// The image files of `dir`/<class> for every class, in name order.
absl::Status ListClassFiles(const fs::path& dir, const std::vector<std::string>& classes, bool test_part_only,
                            bool train_part_only, FileList* out) {
  for (size_t label = 0; label < classes.size(); ++label) {
    const fs::path class_dir = dir / classes[label];
    std::vector<fs::path> files;
    std::error_code ec;
    for (fs::directory_iterator it(class_dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (IsImageFile(*it)) files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    // Without separate split folders, the last sixth of each class is its test split.
    size_t first = 0, last = files.size();
    if (test_part_only || train_part_only) {
      const size_t n_test = files.size() < 2 ? 0 : std::max<size_t>(1, files.size() / 6);
      if (test_part_only) first = files.size() - n_test;
      if (train_part_only) last = files.size() - n_test;
    }
    for (size_t i = first; i < last; ++i) {
      out->files.push_back(files[i]);
      out->labels.push_back(static_cast<std::int64_t>(label));
    }
  }
  return absl::OkStatus();
}

// Decodes every file into one [N, C, H, W] float tensor in [0, 1].
absl::StatusOr<at::Tensor> DecodeAll(const FileList& list, int channels, int height, int width) {
  const auto n = static_cast<std::int64_t>(list.files.size());
  at::Tensor images = at::empty({n, channels, height, width}, at::kFloat);
  std::mutex mu;
  absl::Status first_error;
  at::parallel_for(0, n, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      absl::StatusOr<std::string> bytes = ReadFile(list.files[i]);
      absl::Status status = bytes.status();
      if (status.ok()) {
        auto decoded = DecodeImage(*bytes, channels);
        status = decoded.status();
        if (status.ok()) {
          status = CatchTorch("resizing", [&] {
            at::Tensor x = decoded->to(at::kFloat).unsqueeze(0);
            if (x.size(2) != height || x.size(3) != width) {
              x = at::_upsample_bilinear2d_aa(x, {height, width}, /*align_corners=*/false).clamp(0, 255);
            }
            images[i].copy_(x[0] / 255.0);
          });
        }
      }
      if (!status.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) {
          first_error = absl::Status(status.code(), absl::StrCat(list.files[i].string(), ": ", status.message()));
        }
        return;
      }
    }
  });
  if (!first_error.ok()) return first_error;
  return images;
}

}  // namespace

absl::StatusOr<at::Tensor> DecodeImage(const std::string& bytes, int channels) {
  if (channels != 0 && channels != 1 && channels != 3) {
    return absl::InvalidArgumentError(absl::StrCat("channels must be 1 or 3, got ", channels));
  }
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), "\x89PNG\r\n\x1a\n", 8) == 0) return DecodePng(bytes, channels);
  if (bytes.size() >= 3 && std::memcmp(bytes.data(), "\xff\xd8\xff", 3) == 0) return DecodeJpeg(bytes, channels);
  return absl::InvalidArgumentError("not a PNG or JPEG file");
}

absl::StatusOr<ImageFolder> LoadImageFolder(const std::string& root_path, const ImageFolderOptions& options) {
  const fs::path root(root_path);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return absl::NotFoundError(absl::StrCat("image folder not found: ", root_path));
  fs::path train_dir = root, test_dir;
  if (fs::is_directory(root / "train", ec)) {
    train_dir = root / "train";
    for (const char* name : {"test", "val"}) {
      if (fs::is_directory(root / name, ec)) {
        test_dir = root / name;
        break;
      }
    }
    if (test_dir.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(root_path, " has train/ but no test/ or val/ folder"));
    }
  }
  ImageFolder out;
  out.classes = SubDirectories(train_dir);
  if (out.classes.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(train_dir.string(), " needs one sub-folder per class (at least 2); "
                                                   "found ", out.classes.size()));
  }
  FileList train, test;
  if (test_dir.empty()) {
    RETURN_IF_ERROR(ListClassFiles(train_dir, out.classes, false, true, &train));
    RETURN_IF_ERROR(ListClassFiles(train_dir, out.classes, true, false, &test));
  } else {
    for (const auto& name : SubDirectories(test_dir)) {
      if (!std::binary_search(out.classes.begin(), out.classes.end(), name)) {
        return absl::InvalidArgumentError(absl::StrCat(test_dir.string(), "/", name, " is a class train/ does not have"));
      }
    }
    RETURN_IF_ERROR(ListClassFiles(train_dir, out.classes, false, false, &train));
    RETURN_IF_ERROR(ListClassFiles(test_dir, out.classes, false, false, &test));
  }
  if (train.files.empty() || test.files.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(root_path, " holds ", train.files.size(), " training and ",
                                                   test.files.size(), " test images (.png, .jpg, .jpeg); both must "
                                                   "be non-empty"));
  }
  if (static_cast<std::int64_t>(train.files.size() + test.files.size()) > options.max_images) {
    return absl::InvalidArgumentError(absl::StrCat(root_path, " holds more than ", options.max_images, " images"));
  }
  // Size and channels default to the first image's.
  int channels = options.channels, height = options.height, width = options.width;
  if (channels == 0 || height == 0 || width == 0) {
    ASSIGN_OR_RETURN(std::string bytes, ReadFile(train.files.front()));
    auto first = DecodeImage(bytes, channels);
    if (!first.ok()) {
      return absl::Status(first.status().code(), absl::StrCat(train.files.front().string(), ": ",
                                                              first.status().message()));
    }
    if (channels == 0) channels = static_cast<int>(first->size(0));
    if (height == 0) height = static_cast<int>(first->size(1));
    if (width == 0) width = static_cast<int>(first->size(2));
  }
  ASSIGN_OR_RETURN(out.train_images, DecodeAll(train, channels, height, width));
  ASSIGN_OR_RETURN(out.test_images, DecodeAll(test, channels, height, width));
  out.train_labels = at::tensor(train.labels, at::kLong);
  out.test_labels = at::tensor(test.labels, at::kLong);
  return out;
}

}  // namespace qsearch::search
