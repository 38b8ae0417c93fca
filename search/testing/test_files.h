// Files for tests and benchmarks: PNG and JPEG images as a user's camera or PIL would
// have written them, and zip / tar archives of such files, made here without a Python step.
#ifndef QSEARCH_SEARCH_TESTING_TEST_FILES_H_
#define QSEARCH_SEARCH_TESTING_TEST_FILES_H_

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace qsearch::search::testing {

// uint8 [C, H, W] with C = 1 (grey) or 3 (RGB) -> the bytes of a lossless PNG file.
std::string EncodePng(const at::Tensor& chw);
// uint8 [C, H, W] with C = 1 or 3 -> the bytes of a baseline JPEG file at `quality`.
std::string EncodeJpeg(const at::Tensor& chw, int quality = 100);

// The bytes of an archive holding `files` (path inside the archive, contents) in order:
// format "zip", "tar" or "tar.gz".
std::string ArchiveOf(const std::vector<std::pair<std::string, std::string>>& files, const std::string& format);

}  // namespace qsearch::search::testing

#endif  // QSEARCH_SEARCH_TESTING_TEST_FILES_H_
