// Data sets for search jobs: Fashion-MNIST / MNIST IDX files (gzipped or not), CIFAR-10
// binary batches, tensor archives (a torch.save'd dict {"images": float NCHW, "labels":
// int64}) and image folders (image_folder.h). Splits are deterministic for a seed; images
// are normalised with the spec's mean and std, by default the training split's own.
// Training batches can be augmented (random crop after padding, horizontal flip).
#ifndef QSEARCH_SEARCH_DATA_H_
#define QSEARCH_SEARCH_DATA_H_

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "qsearch/v1/job.pb.h"

namespace qsearch::search {

inline constexpr char kDefaultFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

struct TensorDataset {
  at::Tensor images;  // float32 [N, C, H, W]
  at::Tensor labels;  // int64 [N]
  std::int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

struct DataSplits {
  TensorDataset train, val, test;
  std::int64_t classes = 0;
  std::int64_t channels = 0, height = 0, width = 0;
  // The normalisation applied, per channel: images hold (raw - mean) / std.
  std::vector<double> mean, std;
  std::vector<std::string> class_names;  // when the data set names its classes
};

// Train-time augmentation of a normalised batch, drawing from LibTorch's global
// generator (so a seeded epoch draws the same crops again).
struct Augmentation {
  bool crop = false, flip = false;
  std::int64_t padding = 0;  // crop: pad each side by this much, then crop back
  at::Tensor fill;           // [1, C, 1, 1]: the normalised value of a black pixel
};
// The augmentation a spec asks for (`augment` as WithDefaults resolved it).
Augmentation AugmentationFor(const v1::DatasetSpec& spec, const DataSplits& data);
at::Tensor Augment(const at::Tensor& images, const Augmentation& a);

// Loads and splits the data set a job names. Errors: NotFound for missing files,
// InvalidArgument for corrupt or inconsistent contents (bad magic, count mismatch,
// NaN/Inf pixels, labels out of range, sizes larger than the data).
absl::StatusOr<DataSplits> LoadData(const v1::DatasetSpec& spec);

// Reads one IDX file (images: [N, 1, H, W] float in [0, 1]; labels: [N] int64).
absl::StatusOr<at::Tensor> ReadIdx(const std::string& path);

// Writes a tensor archive loadable by LoadData(kind="archive") and by Python's torch.load.
absl::Status WriteTensorArchive(const std::string& path, const TensorDataset& data);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_DATA_H_
