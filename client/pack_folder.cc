// Image folder -> tar, with libarchive's writer.
#include "client/pack_folder.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace qsearch::client {
namespace {

namespace fs = std::filesystem;

bool IsImage(const fs::path& p) {
  const std::string ext = absl::AsciiStrToLower(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

}  // namespace

absl::StatusOr<int> PackImageFolder(const std::string& dir, const std::string& tar_path) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (name.empty() || name[0] == '.' || it.depth() > 2) {
      if (it->is_directory(type_ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(type_ec) && !it->is_symlink(type_ec) && IsImage(it->path())) {
      files.push_back(fs::relative(it->path(), dir));
    }
  }
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot read ", dir, ": ", ec.message()));
  if (files.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " holds no .png, .jpg or .jpeg files in class folders"));
  }
  std::sort(files.begin(), files.end());
  struct archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (archive_write_open_filename(a, tar_path.c_str()) != ARCHIVE_OK) {
    absl::Status s = absl::InternalError(absl::StrCat("cannot write ", tar_path, ": ", archive_error_string(a)));
    archive_write_free(a);
    return s;
  }
  absl::Status status;
  for (const fs::path& rel : files) {
    std::ifstream in(fs::path(dir) / rel, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
      status = absl::InvalidArgumentError(absl::StrCat("cannot read ", (fs::path(dir) / rel).string()));
      break;
    }
    struct archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, rel.generic_string().c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, static_cast<la_int64_t>(bytes.size()));
    const bool ok = archive_write_header(a, e) == ARCHIVE_OK &&
                    archive_write_data(a, bytes.data(), bytes.size()) == static_cast<la_ssize_t>(bytes.size());
    archive_entry_free(e);
    if (!ok) {
      status = absl::InternalError(absl::StrCat("cannot write ", tar_path, ": ", archive_error_string(a)));
      break;
    }
  }
  if (archive_write_close(a) != ARCHIVE_OK && status.ok()) {
    status = absl::InternalError(absl::StrCat("cannot write ", tar_path, ": ", archive_error_string(a)));
  }
  archive_write_free(a);
  if (!status.ok()) return status;
  return static_cast<int>(files.size());
}

}  // namespace qsearch::client
