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
#include <archive.h>
#include <archive_entry.h>
#include <jpeglib.h>
#include <png.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"
#include "search/progress.h"

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

bool IsImageName(const std::string& name) {
  const std::string lower = absl::AsciiStrToLower(name);
  return absl::EndsWith(lower, ".png") || absl::EndsWith(lower, ".jpg") || absl::EndsWith(lower, ".jpeg");
}

// Hidden files and folders, and the resource forks macOS adds to zip files.
bool Ignored(const std::string& part) { return part.empty() || part[0] == '.' || part == "__MACOSX"; }

// One image of the folder: where it sits below the root, and its bytes or its file.
struct ImageFile {
  std::vector<std::string> parts;  // path components below the root
  fs::path file;                   // on disk, or
  std::string bytes;               // in memory (read from an archive)
  std::string Name() const { return absl::StrJoin(parts, "/"); }
};

absl::Status TooMany(const std::string& where, const ImageFolderOptions& o) {
  return absl::InvalidArgumentError(absl::StrCat(where, " holds more than ", o.max_images, " images"));
}

// The images below a directory, at most three levels down (train/<class>/<file>);
// symbolic links are not followed.
absl::StatusOr<std::vector<ImageFile>> ListDirectory(const fs::path& root, const ImageFolderOptions& options) {
  std::vector<ImageFile> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (Ignored(name) || it.depth() > 2) {
      if (it->is_directory(type_ec)) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file(type_ec) || it->is_symlink(type_ec) || !IsImageName(name)) continue;
    if (static_cast<std::int64_t>(out.size()) >= options.max_images) return TooMany(root.string(), options);
    ImageFile f;
    f.file = it->path();
    for (const auto& part : fs::relative(it->path(), root)) f.parts.push_back(part.string());
    out.push_back(std::move(f));
  }
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot list ", root.string(), ": ", ec.message()));
  return out;
}

// The images in a zip or tar file (optionally gzip/bzip2/xz-compressed), read into memory:
// nothing is extracted, so no entry's path can reach outside.
absl::StatusOr<std::vector<ImageFile>> ReadArchive(const std::string& path, const ImageFolderOptions& options) {
  struct archive* a = archive_read_new();
  archive_read_support_format_zip(a);
  archive_read_support_format_tar(a);
  archive_read_support_filter_gzip(a);
  archive_read_support_filter_bzip2(a);
  archive_read_support_filter_xz(a);
  const auto fail = [&](const std::string& what) {
    absl::Status s = absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
    archive_read_free(a);
    return s;
  };
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) != ARCHIVE_OK) {
    return fail(absl::StrCat("not a directory, zip or tar file of images (", archive_error_string(a), ")"));
  }
  std::vector<ImageFile> out;
  std::int64_t total = 0;
  struct archive_entry* entry;
  int r;
  while ((r = archive_read_next_header(a, &entry)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
    const char* name = archive_entry_pathname(entry);
    if (name == nullptr || archive_entry_filetype(entry) != AE_IFREG) continue;
    ImageFile f;
    bool skip = false;
    for (absl::string_view part : absl::StrSplit(name, '/', absl::SkipEmpty())) {
      if (part == ".") continue;
      if (part == "..") return fail(absl::StrCat("entry '", name, "' climbs out of the archive"));
      skip = skip || Ignored(std::string(part));
      f.parts.emplace_back(part);
    }
    if (skip || f.parts.empty() || !IsImageName(f.parts.back())) continue;
    const std::int64_t size = archive_entry_size(entry);
    total += size;
    if (size < 0 || size > kMaxPixels || total > options.max_bytes) {
      return fail(absl::StrCat("images take more than ", options.max_bytes, " bytes"));
    }
    if (static_cast<std::int64_t>(out.size()) >= options.max_images) {
      archive_read_free(a);
      return TooMany(path, options);
    }
    f.bytes.resize(static_cast<std::size_t>(size));
    if (archive_read_data(a, f.bytes.data(), f.bytes.size()) != size) {
      return fail(absl::StrCat("cannot read '", name, "' (", archive_error_string(a), ")"));
    }
    out.push_back(std::move(f));
  }
  if (r != ARCHIVE_EOF) return fail(absl::StrCat("corrupt archive (", archive_error_string(a), ")"));
  archive_read_free(a);
  return out;
}

struct Split {
  std::vector<const ImageFile*> files;
  std::vector<std::int64_t> labels;
};

// Sorts `files` into classes and splits: train/ + test/ (or val/) folders of class
// folders, or class folders whose last sixth (in name order) is the test split.
absl::Status Arrange(const std::string& root, std::vector<ImageFile>& files, std::vector<std::string>* classes,
                     Split* train, Split* test) {
  // A zip of the folder usually holds the folder itself: drop a top directory all share.
  const auto split_name = [](const std::string& p) { return p == "train" || p == "test" || p == "val"; };
  while (!files.empty() && std::all_of(files.begin(), files.end(), [&](const ImageFile& f) {
           return f.parts.size() >= 3 && f.parts[0] == files.front().parts[0] && !split_name(f.parts[0]);
         })) {
    for (ImageFile& f : files) f.parts.erase(f.parts.begin());
  }
  std::sort(files.begin(), files.end(), [](const ImageFile& a, const ImageFile& b) { return a.parts < b.parts; });
  const bool has_splits = std::any_of(files.begin(), files.end(), [](const ImageFile& f) { return f.parts[0] == "train"; });
  std::string test_dir;
  if (has_splits) {
    for (const char* name : {"test", "val"}) {
      if (std::any_of(files.begin(), files.end(), [&](const ImageFile& f) { return f.parts[0] == name; })) {
        test_dir = name;
        break;
      }
    }
    if (test_dir.empty()) return absl::InvalidArgumentError(absl::StrCat(root, " has train/ but no test/ or val/ folder"));
  }
  // Every image must sit in a class folder: [train|test/]<class>/<file>.
  const size_t depth = has_splits ? 3 : 2;
  std::vector<const ImageFile*> train_files, test_files;
  for (const ImageFile& f : files) {
    if (has_splits && f.parts[0] != "train" && f.parts[0] != test_dir) continue;  // e.g. val/ next to test/
    if (f.parts.size() != depth) {
      return absl::InvalidArgumentError(absl::StrCat(root, ": ", f.Name(), " is not in a class folder (",
                                                     has_splits ? "train/<class>/<file>" : "<class>/<file>", ")"));
    }
    (has_splits && f.parts[0] == test_dir ? test_files : train_files).push_back(&f);
  }
  const size_t class_part = has_splits ? 1 : 0;
  for (const ImageFile* f : train_files) classes->push_back(f->parts[class_part]);
  classes->erase(std::unique(classes->begin(), classes->end()), classes->end());  // files are sorted
  if (classes->size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(root, " needs one folder of images per class (at least 2); found ",
                                                   classes->size()));
  }
  const auto label_of = [&](const ImageFile* f) -> std::int64_t {
    auto it = std::lower_bound(classes->begin(), classes->end(), f->parts[class_part]);
    return it != classes->end() && *it == f->parts[class_part] ? it - classes->begin() : -1;
  };
  if (has_splits) {
    for (const ImageFile* f : test_files) {
      const std::int64_t label = label_of(f);
      if (label < 0) {
        return absl::InvalidArgumentError(absl::StrCat(root, ": ", test_dir, "/", f->parts[1],
                                                       " is a class train/ does not have"));
      }
      test->files.push_back(f);
      test->labels.push_back(label);
    }
    for (const ImageFile* f : train_files) {
      train->files.push_back(f);
      train->labels.push_back(label_of(f));
    }
  } else {
    // Files are sorted by class, then name: the last sixth of each class run is its test split.
    for (size_t begin = 0; begin < train_files.size();) {
      size_t end = begin;
      while (end < train_files.size() && train_files[end]->parts[0] == train_files[begin]->parts[0]) ++end;
      const size_t n = end - begin, n_test = n < 2 ? 0 : std::max<size_t>(1, n / 6);
      for (size_t i = begin; i < end; ++i) {
        Split& s = i >= end - n_test ? *test : *train;
        s.files.push_back(train_files[i]);
        s.labels.push_back(label_of(train_files[i]));
      }
      begin = end;
    }
  }
  if (train->files.empty() || test->files.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(root, " holds ", train->files.size(), " training and ",
                                                   test->files.size(), " test images (.png, .jpg, .jpeg); both must "
                                                   "be non-empty"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Bytes(const ImageFile& f) {
  if (!f.file.empty()) return ReadFile(f.file);
  return f.bytes;
}

// Decodes every file into one [N, C, H, W] float tensor in [0, 1].
absl::StatusOr<at::Tensor> DecodeAll(const std::string& root, const Split& split, int channels, int height, int width) {
  const auto n = static_cast<std::int64_t>(split.files.size());
  at::Tensor images = at::empty({n, channels, height, width}, at::kFloat);
  std::mutex mu;
  absl::Status first_error;  // the failing file with the lowest index, whatever the threads
  std::int64_t first_error_index = n;
  at::parallel_for(0, n, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      absl::StatusOr<std::string> bytes = Bytes(*split.files[i]);
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
      Tick();
      if (!status.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (i < first_error_index) {
          first_error_index = i;
          first_error = absl::Status(status.code(),
                                     absl::StrCat(root, ": ", split.files[i]->Name(), ": ", status.message()));
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

absl::StatusOr<ImageFolder> LoadImageFolder(const std::string& root, const ImageFolderOptions& options) {
  std::error_code ec;
  if (!fs::exists(root, ec)) return absl::NotFoundError(absl::StrCat("image folder not found: ", root));
  std::vector<ImageFile> files;
  if (fs::is_directory(root, ec)) {
    ASSIGN_OR_RETURN(files, ListDirectory(root, options));
  } else {
    ASSIGN_OR_RETURN(files, ReadArchive(root, options));
  }
  ImageFolder out;
  Split train, test;
  RETURN_IF_ERROR(Arrange(root, files, &out.classes, &train, &test));
  // Size and channels default to the first image's.
  int channels = options.channels, height = options.height, width = options.width;
  if (channels == 0 || height == 0 || width == 0) {
    ASSIGN_OR_RETURN(std::string bytes, Bytes(*train.files.front()));
    auto first = DecodeImage(bytes, channels);
    if (!first.ok()) {
      return absl::Status(first.status().code(), absl::StrCat(root, ": ", train.files.front()->Name(), ": ",
                                                              first.status().message()));
    }
    if (channels == 0) channels = static_cast<int>(first->size(0));
    if (height == 0) height = static_cast<int>(first->size(1));
    if (width == 0) width = static_cast<int>(first->size(2));
  }
  ASSIGN_OR_RETURN(out.train_images, DecodeAll(root, train, channels, height, width));
  ASSIGN_OR_RETURN(out.test_images, DecodeAll(root, test, channels, height, width));
  out.train_labels = at::tensor(train.labels, at::kLong);
  out.test_labels = at::tensor(test.labels, at::kLong);
  return out;
}

}  // namespace qsearch::search
