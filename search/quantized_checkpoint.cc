// quantized.pt: per-channel codebooks and codes for every quantized layer, the model state
// as its user loads it, the input quantizers.
#include "search/quantized_checkpoint.h"

#include <filesystem>
#include <fstream>

#include <google/protobuf/util/json_util.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"

namespace qsearch::search {

namespace {
constexpr char kFormat[] = "qsearch.quantized.v1";
}  // namespace

absl::StatusOr<EncodedWeight> EncodeWeight(const at::Tensor& fake_quantized) {
  at::Tensor w = fake_quantized.detach().to(at::kFloat).contiguous();
  const std::int64_t out = w.size(0);
  at::Tensor rows = w.reshape({out, -1});
  std::vector<at::Tensor> levels(out);
  std::int64_t width = 1;
  for (std::int64_t c = 0; c < out; ++c) {
    levels[c] = std::get<0>(at::_unique(rows[c], /*sorted=*/true));
    width = std::max(width, levels[c].numel());
  }
  if (width > 256) {
    return absl::InvalidArgumentError(absl::StrCat("a channel holds ", width,
                                                   " distinct values; a quantized weight has at most 256"));
  }
  EncodedWeight e;
  e.levels = at::zeros({out, width});
  e.scale = at::ones({out});
  at::Tensor codes = at::empty_like(rows, at::kLong);
  for (std::int64_t c = 0; c < out; ++c) {
    const double s = levels[c].abs().max().item<double>();
    if (s > 0) e.scale[c] = s;
    e.levels[c].slice(0, 0, levels[c].numel()).copy_(levels[c] / e.scale[c]);
    codes[c] = at::searchsorted(levels[c], rows[c]);
  }
  e.codes = codes.to(at::kByte).reshape(w.sizes());
  return e;
}

at::Tensor DecodeWeight(const EncodedWeight& e) {
  const std::int64_t out = e.levels.size(0);
  at::Tensor codes = e.codes.reshape({out, -1}).to(at::kLong);
  return (e.levels.gather(1, codes) * e.scale.unsqueeze(1)).reshape(e.codes.sizes());
}

absl::StatusOr<at::Tensor> FakeQuantizedWeight(QuantLayer& layer) {
  if (layer.mode() != QuantMode::kFixed) return absl::InvalidArgumentError("export needs the model's final (fixed) policy");
  return CatchTorch("quantizing a weight", [&] {
    torch::NoGradGuard ng;
    const bool was_training = layer.is_training();
    layer.eval();
    at::Tensor fq = layer.fixed_weight_quantizer()->forward(layer.weight()).detach();
    layer.train(was_training);
    return fq;
  });
}

absl::StatusOr<AffineActivation> InputQuantizerAsAffine(QuantLayer& layer, const std::string& name) {
  if (layer.mode() != QuantMode::kFixed) return absl::InvalidArgumentError("export needs the model's final (fixed) policy");
  return CatchTorch("reading an input quantizer", [&]() -> absl::StatusOr<AffineActivation> {
    torch::NoGradGuard ng;
    quantizers::Quantizer& q = *layer.fixed_act_quantizer();
    const bool was_training = q.is_training();
    q.eval();
    const quantizers::PointForm form = q.Prepare(at::zeros({1}));
    q.train(was_training);
    AffineActivation a;
    if (form.kind == quantizers::PointKind::kIdentity) {
      a.identity = true;
      return a;
    }
    if (form.kind != quantizers::PointKind::kAffine || form.table.size(0) != 1) {
      return absl::UnimplementedError(absl::StrCat("layer ", name, ": activation scheme '", layer.act_spec(),
                                                   "' has no affine form to export"));
    }
    const at::Tensor row = form.table[0];
    a.scale = row[0].item<double>();
    a.zero = row[1].item<double>();
    a.lo = row[2].item<double>();
    a.hi = row[3].item<double>();
    return a;
  });
}

absl::Status WriteQuantizedCheckpoint(const std::string& path, QuantModel& model, const v1::Policy& policy) {
  ASSIGN_OR_RETURN(const std::string json, ToJson(policy, /*pretty=*/false));
  std::map<std::string, bool> excluded;
  for (const auto& l : policy.layers()) excluded[l.name()] = l.excluded();
  std::map<std::string, at::Tensor> fake_quantized;
  c10::impl::GenericDict layers(c10::StringType::get(), c10::AnyType::get());
  for (auto& [name, layer] : model.QuantLayers()) {
    if (excluded[name] || layer->mode() != QuantMode::kFixed) continue;
    ASSIGN_OR_RETURN(at::Tensor fq, FakeQuantizedWeight(*layer));
    ASSIGN_OR_RETURN(EncodedWeight e, EncodeWeight(fq));
    ASSIGN_OR_RETURN(AffineActivation a, InputQuantizerAsAffine(*layer, name));
    fake_quantized[name] = fq;
    c10::Dict<std::string, at::Tensor> entry;
    entry.insert("codes", e.codes);
    entry.insert("levels", e.levels);
    entry.insert("scale", e.scale);
    if (!a.identity) {
      entry.insert("input_scale", at::full({1}, a.scale, at::kFloat));
      entry.insert("input_zero_point", at::full({1}, a.zero, at::kFloat));
      entry.insert("input_min", at::full({1}, a.lo, at::kFloat));
      entry.insert("input_max", at::full({1}, a.hi, at::kFloat));
    }
    layers.insert(name, entry);
  }
  return CatchTorch("writing quantized checkpoint", [&]() -> absl::Status {
    c10::Dict<std::string, at::Tensor> state_dict;
    for (const auto& [k, v] : model.DeployState(fake_quantized)) state_dict.insert(k, v);
    const auto floats = [](const auto& values) {
      return at::tensor(std::vector<float>(values.begin(), values.end()), at::kFloat);
    };
    c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
    root.insert("format", std::string(kFormat));
    root.insert("policy", json);
    root.insert("batchnorm_folded", model.batchnorm_folded());
    root.insert("input_mean", floats(policy.input_mean()));
    root.insert("input_std", floats(policy.input_std()));
    root.insert("state", state_dict);
    root.insert("layers", layers);
    const std::vector<char> bytes = torch::pickle_save(c10::IValue(root));
    return WriteFileAtomically(path, bytes);
  });
}

absl::StatusOr<QuantizedCheckpoint> ReadQuantizedCheckpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("no quantized checkpoint at ", path));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return CatchTorch("reading quantized checkpoint", [&]() -> absl::StatusOr<QuantizedCheckpoint> {
    const c10::IValue v = torch::pickle_load(bytes);
    if (!v.isGenericDict()) return absl::DataLossError(absl::StrCat(path, " is not a quantized checkpoint"));
    const auto root = v.toGenericDict();
    if (!root.contains("format") || root.at("format").toStringRef() != kFormat) {
      return absl::DataLossError(absl::StrCat(path, " is not a ", kFormat, " file"));
    }
    QuantizedCheckpoint q;
    if (!google::protobuf::util::JsonStringToMessage(root.at("policy").toStringRef(), &q.policy).ok()) {
      return absl::DataLossError("the checkpoint's policy does not parse");
    }
    q.batchnorm_folded = root.contains("batchnorm_folded") && root.at("batchnorm_folded").toBool();
    for (const auto& t : root.at("state").toGenericDict()) q.state[t.key().toStringRef()] = t.value().toTensor();
    for (const auto& l : root.at("layers").toGenericDict()) {
      const auto entry = l.value().toGenericDict();
      q.layers[l.key().toStringRef()] = {entry.at("codes").toTensor(), entry.at("levels").toTensor(),
                                         entry.at("scale").toTensor()};
    }
    return q;
  });
}

absl::Status LoadQuantizedCheckpoint(QuantModel& model, const QuantizedCheckpoint& checkpoint) {
  auto layers = model.QuantLayers();
  if (static_cast<int>(layers.size()) != checkpoint.policy.layers_size()) {
    return absl::InvalidArgumentError(absl::StrCat("the checkpoint's policy has ", checkpoint.policy.layers_size(),
                                                   " layers; the model has ", layers.size()));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const v1::LayerPolicy& l = checkpoint.policy.layers(static_cast<int>(i));
    if (l.name() != layers[i].first) {
      return absl::InvalidArgumentError(absl::StrCat("policy layer ", i, " is '", l.name(), "'; the model's is '",
                                                     layers[i].first, "'"));
    }
    if (!l.excluded()) RETURN_IF_ERROR(layers[i].second->SetDeployed(l.weight().spec(), l.activation().spec()));
  }
  if (checkpoint.batchnorm_folded) model.FoldBatchNorm();
  return LoadModuleState(model, checkpoint.state, "quantized checkpoint");
}

}  // namespace qsearch::search
