// IDX, CIFAR-10 and tensor-archive loading, splitting and normalisation.
#include "search/data.h"

#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include <ATen/ATen.h>
#include <torch/serialize.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"
#include "search/image_folder.h"

namespace qsearch::search {
namespace {

bool FileExists(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  std::fclose(f);
  return true;
}

// Reads a whole file, transparently gunzipping it.
absl::StatusOr<std::vector<unsigned char>> ReadMaybeGzip(const std::string& path) {
  if (!FileExists(path)) return absl::NotFoundError(absl::StrCat("data file not found: ", path));
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.insert(out.end(), buf, buf + n);
  int err = 0;
  const char* msg = gzerror(f, &err);
  const bool failed = n < 0 || (err != Z_OK && err != Z_BUF_ERROR);
  std::string why = failed && msg != nullptr ? msg : "";
  gzclose(f);
  if (failed) return absl::InvalidArgumentError(absl::StrCat(path, ": corrupt gzip data (", why, ")"));
  return out;
}

std::uint32_t BigEndian32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// "name" or "name.gz", whichever exists (plain first).
std::string FindIdx(const std::string& dir, const std::string& name) {
  const std::string plain = dir + "/" + name;
  if (FileExists(plain)) return plain;
  return plain + ".gz";
}

absl::StatusOr<TensorDataset> LoadIdxPair(const std::string& dir, const std::string& prefix) {
  ASSIGN_OR_RETURN(at::Tensor images, ReadIdx(FindIdx(dir, prefix + "-images-idx3-ubyte")));
  ASSIGN_OR_RETURN(at::Tensor labels, ReadIdx(FindIdx(dir, prefix + "-labels-idx1-ubyte")));
  if (images.dim() != 4 || labels.dim() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": ", prefix,
                                                   " images must be 3-D IDX and labels 1-D IDX"));
  }
  if (images.size(0) != labels.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": ", prefix, " has ", images.size(0),
                                                   " images but ", labels.size(0), " labels"));
  }
  return TensorDataset{images, labels};
}

absl::StatusOr<TensorDataset> LoadCifarFiles(const std::vector<std::string>& files) {
  constexpr std::int64_t kRecord = 1 + 3 * 32 * 32;
  std::vector<unsigned char> all;
  for (const auto& f : files) {
    ASSIGN_OR_RETURN(std::vector<unsigned char> bytes, ReadMaybeGzip(f));
    if (bytes.size() % kRecord != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          f, ": size ", bytes.size(), " is not a whole number of 3073-byte CIFAR-10 records"));
    }
    all.insert(all.end(), bytes.begin(), bytes.end());
  }
  const std::int64_t n = static_cast<std::int64_t>(all.size()) / kRecord;
  at::Tensor raw = at::from_blob(all.data(), {n, kRecord}, at::kByte).clone();
  at::Tensor labels = raw.select(1, 0).to(at::kLong);
  at::Tensor images = raw.slice(1, 1).reshape({n, 3, 32, 32}).to(at::kFloat) / 255.0;
  if (labels.max().item<std::int64_t>() > 9) {
    return absl::InvalidArgumentError("CIFAR-10 labels must be 0..9");
  }
  return TensorDataset{images, labels};
}

absl::StatusOr<TensorDataset> LoadArchive(const std::string& path) {
  if (!FileExists(path)) return absl::NotFoundError(absl::StrCat("archive not found: ", path));
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  constexpr char kUsage[] = "torch.save({'images': float [N, C, H, W], 'labels': int64 [N]}, path)";
  if (bytes.size() < 4 || std::memcmp(bytes.data(), "PK\x03\x04", 4) != 0) {
    // torch.save's zip format starts like any zip file; the pre-1.6 format is a bare pickle.
    const bool legacy = !bytes.empty() && static_cast<unsigned char>(bytes[0]) == 0x80;
    return absl::InvalidArgumentError(absl::StrCat(
        path, legacy ? " is in torch.save's legacy (non-zip) format; save it again with the default format, "
                     : " is not a tensor archive; save one with ",
        legacy ? "without _use_new_zipfile_serialization=False: " : "", kUsage));
  }
  auto loaded = CatchTorch("reading tensor archive", [&] { return torch::pickle_load(bytes); });
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a tensor archive (", kUsage,
                                                   "): ", loaded.status().message()));
  }
  if (!loaded->isGenericDict()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a dict with 'images' and 'labels'"));
  }
  auto dict = loaded->toGenericDict();
  if (!dict.contains("images") || !dict.contains("labels") || !dict.at("images").isTensor() ||
      !dict.at("labels").isTensor()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected tensors under 'images' and 'labels'"));
  }
  at::Tensor images = dict.at("images").toTensor();
  at::Tensor labels = dict.at("labels").toTensor();
  // What users often have at hand: uint8 pixels (scaled to [0, 1]) and grey [N, H, W].
  if (images.scalar_type() == at::kByte) images = images.to(at::kFloat) / 255.0;
  if (images.dim() == 3) images = images.unsqueeze(1);
  if (images.dim() != 4 || !images.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": images must be float [N, C, H, W] (or uint8, or [N, H, W] "
                                                   "for one channel); got ", images.scalar_type(), " of ",
                                                   images.dim(), " dimensions"));
  }
  if (labels.dim() != 1 || labels.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": labels must be integer [N]"));
  }
  if (images.size(0) != labels.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", images.size(0), " images but ",
                                                   labels.size(0), " labels"));
  }
  return TensorDataset{images.to(at::kFloat).contiguous(), labels.to(at::kLong).contiguous()};
}

TensorDataset Take(const TensorDataset& d, const at::Tensor& index) {
  return {d.images.index_select(0, index).contiguous(), d.labels.index_select(0, index).contiguous()};
}

absl::Status CheckSize(const char* what, std::int64_t want, std::int64_t have) {
  if (want > have) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " size ", want, " is larger than the ", have, " examples available"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> ReadIdx(const std::string& path) {
  ASSIGN_OR_RETURN(std::vector<unsigned char> bytes, ReadMaybeGzip(path));
  if (bytes.size() < 8 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not an unsigned-byte IDX file (bad magic number)"));
  }
  const int dims = bytes[3];
  if (dims < 1 || dims > 3 || bytes.size() < 4 + 4 * static_cast<size_t>(dims)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported IDX rank ", dims));
  }
  std::vector<std::int64_t> shape;
  std::int64_t count = 1;
  for (int d = 0; d < dims; ++d) {
    shape.push_back(BigEndian32(bytes.data() + 4 + 4 * d));
    count *= shape.back();
  }
  const size_t header = 4 + 4 * static_cast<size_t>(dims);
  if (bytes.size() != header + static_cast<size_t>(count)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header promises ", count,
                                                   " bytes of data but the file holds ",
                                                   bytes.size() - header, " (truncated?)"));
  }
  at::Tensor t = at::from_blob(bytes.data() + header, shape, at::kByte).clone();
  if (dims == 1) return t.to(at::kLong);
  if (dims == 3) t = t.unsqueeze(1);  // [N, 1, H, W]
  return t.to(at::kFloat) / 255.0;
}

absl::Status WriteTensorArchive(const std::string& path, const TensorDataset& data) {
  return CatchTorch("writing tensor archive", [&]() -> absl::Status {
    c10::Dict<std::string, at::Tensor> dict;
    dict.insert("images", data.images);
    dict.insert("labels", data.labels);
    std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
    return absl::OkStatus();
  });
}

absl::StatusOr<DataSplits> LoadData(const v1::DatasetSpec& spec) {
  const std::string kind = spec.kind().empty() ? "fashion_mnist" : spec.kind();
  TensorDataset train_all, test;
  std::vector<std::string> class_names;
  if (kind == "fashion_mnist" || kind == "mnist") {
    const std::string dir = spec.path().empty() ? kDefaultFashionMnistDir : spec.path();
    ASSIGN_OR_RETURN(train_all, LoadIdxPair(dir, "train"));
    ASSIGN_OR_RETURN(test, LoadIdxPair(dir, "t10k"));
  } else if (kind == "cifar10") {
    if (spec.path().empty()) return absl::InvalidArgumentError("cifar10 needs dataset.path");
    std::vector<std::string> train_files;
    for (int i = 1; i <= 5; ++i) train_files.push_back(absl::StrCat(spec.path(), "/data_batch_", i, ".bin"));
    ASSIGN_OR_RETURN(train_all, LoadCifarFiles(train_files));
    ASSIGN_OR_RETURN(test, LoadCifarFiles({spec.path() + "/test_batch.bin"}));
  } else if (kind == "archive") {
    if (spec.path().empty()) return absl::InvalidArgumentError("archive needs dataset.path");
    ASSIGN_OR_RETURN(TensorDataset all, LoadArchive(spec.path()));
    // The archive's last sixth is its test split.
    const std::int64_t n = all.size();
    const std::int64_t n_test = std::max<std::int64_t>(1, n / 6);
    if (n < 3) return absl::InvalidArgumentError("archive holds fewer than 3 examples");
    train_all = {all.images.slice(0, 0, n - n_test), all.labels.slice(0, 0, n - n_test)};
    test = {all.images.slice(0, n - n_test), all.labels.slice(0, n - n_test)};
  } else if (kind == "image_folder") {
    if (spec.path().empty()) return absl::InvalidArgumentError("image_folder needs dataset.path");
    ImageFolderOptions options;
    options.height = spec.height();
    options.width = spec.width();
    options.channels = spec.channels();
    ASSIGN_OR_RETURN(ImageFolder folder, LoadImageFolder(spec.path(), options));
    train_all = {folder.train_images, folder.train_labels};
    test = {folder.test_images, folder.test_labels};
    class_names = std::move(folder.classes);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown dataset kind '", kind, "'; use fashion_mnist, mnist, cifar10, archive or image_folder"));
  }
  if (!at::isfinite(train_all.images).all().item<bool>() ||
      !at::isfinite(test.images).all().item<bool>()) {
    return absl::InvalidArgumentError("data set images contain NaN or Inf");
  }
  if (train_all.size() == 0 || test.size() == 0) return absl::InvalidArgumentError("the data set holds no images");
  if (train_all.labels.min().item<std::int64_t>() < 0 || test.labels.min().item<std::int64_t>() < 0) {
    return absl::InvalidArgumentError("labels must be non-negative class indices");
  }
  // The class count sizes the model's last layer: bounded, or declared.
  const std::int64_t largest = std::max(train_all.labels.max().item<std::int64_t>(), test.labels.max().item<std::int64_t>());
  constexpr std::int64_t kMaxInferredClasses = 1000;
  if (spec.classes() > 0 && largest >= spec.classes()) {
    return absl::InvalidArgumentError(absl::StrCat("a label is ", largest, ", outside the declared ", spec.classes(),
                                                   " classes (dataset.classes)"));
  }
  if (spec.classes() == 0 && largest >= kMaxInferredClasses) {
    return absl::InvalidArgumentError(absl::StrCat("the labels go up to ", largest, "; with more than ",
                                                   kMaxInferredClasses, " classes declare dataset.classes (at most "
                                                   "65536)"));
  }
  const std::int64_t classes = spec.classes() > 0 ? spec.classes() : largest + 1;

  // Deterministic split: one permutation of the training set for this seed.
  const std::int64_t n = train_all.size();
  const std::int64_t val_size = spec.val_size() > 0 ? spec.val_size() : std::max<std::int64_t>(1, n / 10);
  RETURN_IF_ERROR(CheckSize("validation", val_size, n - 1));
  const std::int64_t train_size = spec.train_size() > 0 ? spec.train_size() : n - val_size;
  RETURN_IF_ERROR(CheckSize("train", train_size, n - val_size));
  const std::int64_t test_size = spec.test_size() > 0 ? spec.test_size() : test.size();
  RETURN_IF_ERROR(CheckSize("test", test_size, test.size()));

  at::Generator gen = at::detail::createCPUGenerator(spec.seed());
  at::Tensor perm = at::randperm(n, gen, at::kLong);
  DataSplits out;
  out.val = Take(train_all, perm.slice(0, 0, val_size));
  out.train = Take(train_all, perm.slice(0, val_size, val_size + train_size));
  at::Tensor test_perm = at::randperm(test.size(), gen, at::kLong).slice(0, 0, test_size);
  out.test = Take(test, test_perm);

  // Normalise per channel: with the spec's statistics, else the training split's.
  const std::int64_t channels = out.train.images.size(1);
  at::Tensor mean, std;
  if (spec.mean().empty()) {
    // Summed in float64, a channel at a time: a float32 sum over millions of pixels would
    // depend on how the threads split it, and so would every result downstream.
    std::vector<float> m(channels), s(channels);
    for (std::int64_t c = 0; c < channels; ++c) {
      const at::Tensor plane = out.train.images.select(1, c).to(at::kDouble);
      m[c] = static_cast<float>(plane.mean().item<double>());
      s[c] = static_cast<float>(std::max(plane.std(/*unbiased=*/false).item<double>(), 1e-6));
    }
    mean = at::tensor(m, at::kFloat).reshape({1, channels, 1, 1});
    std = at::tensor(s, at::kFloat).reshape({1, channels, 1, 1});
  } else {
    for (const auto* values : {&spec.mean(), &spec.std()}) {
      if (values->size() != 1 && values->size() != channels) {
        return absl::InvalidArgumentError(absl::StrCat("dataset.mean and dataset.std need 1 or ", channels,
                                                       " values (the images have ", channels, " channels)"));
      }
    }
    const auto per_channel = [&](const auto& values) {
      std::vector<float> v(values.begin(), values.end());
      if (v.size() == 1) v.assign(channels, v[0]);
      return at::tensor(v, at::kFloat).reshape({1, channels, 1, 1});
    };
    mean = per_channel(spec.mean());
    std = per_channel(spec.std());
  }
  for (TensorDataset* d : {&out.train, &out.val, &out.test}) d->images = ((d->images - mean) / std).contiguous();
  // Recorded as given (a user's 0.3 stays 0.3), else as computed.
  for (std::int64_t c = 0; c < channels; ++c) {
    out.mean.push_back(spec.mean().empty() ? mean.flatten()[c].item<double>() : spec.mean(spec.mean_size() == 1 ? 0 : c));
    out.std.push_back(spec.std().empty() ? std.flatten()[c].item<double>() : spec.std(spec.std_size() == 1 ? 0 : c));
  }
  out.class_names = std::move(class_names);
  out.classes = classes;
  out.channels = out.train.images.size(1);
  out.height = out.train.images.size(2);
  out.width = out.train.images.size(3);
  return out;
}

Augmentation AugmentationFor(const v1::DatasetSpec& spec, const DataSplits& data) {
  Augmentation a;
  a.crop = spec.augment() == "crop_flip" || spec.augment() == "crop";
  a.flip = spec.augment() == "crop_flip" || spec.augment() == "flip";
  a.padding = std::max<std::int64_t>(1, std::min(data.height, data.width) / 8);
  std::vector<float> fill;
  for (size_t c = 0; c < data.mean.size(); ++c) fill.push_back(static_cast<float>(-data.mean[c] / data.std[c]));
  a.fill = at::tensor(fill, at::kFloat).reshape({1, static_cast<std::int64_t>(fill.size()), 1, 1});
  return a;
}

at::Tensor Augment(const at::Tensor& images, const Augmentation& a) {
  at::Tensor out = images;
  const std::int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  if (a.crop) {
    const std::int64_t p = a.padding;
    // Pad with black, as torchvision's RandomCrop pads the image before normalisation.
    const at::Tensor padded = at::constant_pad_nd(images - a.fill, {p, p, p, p}, 0) + a.fill;
    const at::Tensor offsets = at::randint(0, 2 * p + 1, {n, 2}, at::kLong);
    const auto o = offsets.accessor<std::int64_t, 2>();
    std::vector<at::Tensor> crops;
    crops.reserve(n);
    for (std::int64_t i = 0; i < n; ++i) crops.push_back(padded[i].slice(1, o[i][0], o[i][0] + h).slice(2, o[i][1], o[i][1] + w));
    out = at::stack(crops);
  }
  if (a.flip) {
    const at::Tensor flip = (at::rand({n}) < 0.5).reshape({n, 1, 1, 1});
    out = at::where(flip, out.flip({3}), out);
  }
  return out.contiguous();
}

}  // namespace qsearch::search
