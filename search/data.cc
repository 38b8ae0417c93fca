// IDX, CIFAR-10 and tensor-archive loading, splitting and normalisation.
#include "search/data.h"

#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include <ATen/ATen.h>
#include <torch/serialize.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"

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
  auto loaded = CatchTorch("reading tensor archive", [&] { return torch::pickle_load(bytes); });
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " is not a tensor archive (torch.save of {'images': ..., 'labels': ...}): ",
        loaded.status().message()));
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
  if (images.dim() != 4 || !images.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": images must be float [N, C, H, W]"));
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
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown dataset kind '", kind, "'; use fashion_mnist, mnist, cifar10 or archive"));
  }
  if (!at::isfinite(train_all.images).all().item<bool>() ||
      !at::isfinite(test.images).all().item<bool>()) {
    return absl::InvalidArgumentError("data set images contain NaN or Inf");
  }
  const std::int64_t classes =
      std::max(train_all.labels.max().item<std::int64_t>(), test.labels.max().item<std::int64_t>()) + 1;
  if (train_all.labels.min().item<std::int64_t>() < 0 || test.labels.min().item<std::int64_t>() < 0) {
    return absl::InvalidArgumentError("labels must be non-negative class indices");
  }

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

  // Normalise per channel with the training split's statistics.
  at::Tensor mean = out.train.images.mean({0, 2, 3}, /*keepdim=*/true);
  at::Tensor std = out.train.images.std({0, 2, 3}, /*unbiased=*/false, /*keepdim=*/true).clamp_min(1e-6);
  for (TensorDataset* d : {&out.train, &out.val, &out.test}) d->images = ((d->images - mean) / std).contiguous();
  out.classes = classes;
  out.channels = out.train.images.size(1);
  out.height = out.train.images.size(2);
  out.width = out.train.images.size(3);
  return out;
}

}  // namespace qsearch::search
