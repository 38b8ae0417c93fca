// libpng's simplified writer, libjpeg's compressor and libarchive's writer, to memory.
#include "search/testing/test_files.h"

#include <cstdio>
#include <cstdlib>

// libjpeg's header needs FILE and size_t declared first.
#include <archive.h>
#include <archive_entry.h>
#include <jpeglib.h>
#include <png.h>

#include <ATen/ATen.h>

namespace qsearch::search::testing {

std::string EncodePng(const at::Tensor& chw) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(chw.size(2));
  image.height = static_cast<png_uint_32>(chw.size(1));
  image.format = chw.size(0) == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  const at::Tensor hwc = chw.permute({1, 2, 0}).contiguous();
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, hwc.data_ptr(), 0, nullptr)) return "";
  std::string out(size, '\0');
  if (!png_image_write_to_memory(&image, out.data(), &size, 0, hwc.data_ptr(), 0, nullptr)) return "";
  out.resize(size);
  return out;
}

std::string EncodeJpeg(const at::Tensor& chw, int quality) {
  jpeg_compress_struct info;
  jpeg_error_mgr err;
  info.err = jpeg_std_error(&err);
  jpeg_create_compress(&info);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &buffer, &size);
  const int channels = static_cast<int>(chw.size(0));
  info.image_width = static_cast<JDIMENSION>(chw.size(2));
  info.image_height = static_cast<JDIMENSION>(chw.size(1));
  info.input_components = channels;
  info.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  jpeg_start_compress(&info, TRUE);
  const at::Tensor hwc = chw.permute({1, 2, 0}).contiguous();
  while (info.next_scanline < info.image_height) {
    JSAMPROW row = hwc.data_ptr<std::uint8_t>() + static_cast<std::size_t>(info.next_scanline) * info.image_width * channels;
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  std::string out(reinterpret_cast<char*>(buffer), size);
  std::free(buffer);
  return out;
}

std::string ArchiveOf(const std::vector<std::pair<std::string, std::string>>& files, const std::string& format) {
  struct archive* a = archive_write_new();
  if (format == "zip") {
    archive_write_set_format_zip(a);
  } else {
    archive_write_set_format_pax_restricted(a);
    if (format == "tar.gz") archive_write_add_filter_gzip(a);
  }
  std::string out(std::size_t{64} << 20, '\0');
  std::size_t used = 0;
  archive_write_open_memory(a, out.data(), out.size(), &used);
  for (const auto& [path, bytes] : files) {
    struct archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, static_cast<la_int64_t>(bytes.size()));
    archive_write_header(a, e);
    archive_write_data(a, bytes.data(), bytes.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  out.resize(used);
  return out;
}

}  // namespace qsearch::search::testing
