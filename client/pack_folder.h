// Packs a local image folder (class sub-folders of PNG / JPEG files, optionally under
// train/ and test/) into one tar file the service accepts as an `image_folder` data set.
// Deterministic: the same folder always packs to the same bytes (sorted entries, no
// timestamps or owners), so a re-submitted folder is recognised by its sha256 and an
// interrupted upload resumes.
#ifndef QSEARCH_CLIENT_PACK_FOLDER_H_
#define QSEARCH_CLIENT_PACK_FOLDER_H_

#include <string>

#include "absl/status/statusor.h"

namespace qsearch::client {

// Writes the image files below `dir` (hidden files and folders skipped, symbolic links
// not followed, at most three levels down) to the tar file `tar_path`. Returns how many
// images it packed; InvalidArgument when `dir` holds none.
absl::StatusOr<int> PackImageFolder(const std::string& dir, const std::string& tar_path);

}  // namespace qsearch::client

#endif  // QSEARCH_CLIENT_PACK_FOLDER_H_
