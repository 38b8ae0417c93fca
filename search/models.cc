// Zoo model definitions.
#include "search/models.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace qsearch::search {
namespace {

using Bn = std::shared_ptr<FoldableBatchNorm>;
Bn BatchNorm2d(std::int64_t c) { return std::make_shared<FoldableBatchNorm>(c); }

std::shared_ptr<QuantLayer> Conv(std::int64_t in, std::int64_t out, std::int64_t k,
                                 std::int64_t stride = 1, std::int64_t groups = 1) {
  return std::make_shared<QuantLayer>(in, out, k, stride, k / 2, groups, /*bias=*/false);
}
std::shared_ptr<QuantLayer> Fc(std::int64_t in, std::int64_t out) {
  return std::make_shared<QuantLayer>(in, out, 0);
}

class Mlp : public QuantModel {
 public:
  explicit Mlp(const ModelShape& s) {
    const std::int64_t in = s.channels * s.height * s.width;
    fc1_ = register_module("fc1", Fc(in, 256));
    fc2_ = register_module("fc2", Fc(256, 128));
    fc3_ = register_module("fc3", Fc(128, s.classes));
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = torch::relu(fc1_->forward(x.flatten(1)));
    h = torch::relu(fc2_->forward(h));
    return fc3_->forward(h);
  }

 private:
  std::shared_ptr<QuantLayer> fc1_, fc2_, fc3_;
};

class LeNet5 : public QuantModel {
 public:
  explicit LeNet5(const ModelShape& s) {
    conv1_ = register_module("conv1", std::make_shared<QuantLayer>(s.channels, 6, 5, 1, 2));
    conv2_ = register_module("conv2", std::make_shared<QuantLayer>(6, 16, 5, 1, 0));
    const std::int64_t h = ((s.height / 2) - 4) / 2, w = ((s.width / 2) - 4) / 2;
    fc1_ = register_module("fc1", Fc(16 * h * w, 120));
    fc2_ = register_module("fc2", Fc(120, 84));
    fc3_ = register_module("fc3", Fc(84, s.classes));
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = torch::max_pool2d(torch::relu(conv1_->forward(x)), 2);
    h = torch::max_pool2d(torch::relu(conv2_->forward(h)), 2);
    h = torch::relu(fc1_->forward(h.flatten(1)));
    h = torch::relu(fc2_->forward(h));
    return fc3_->forward(h);
  }

 private:
  std::shared_ptr<QuantLayer> conv1_, conv2_, fc1_, fc2_, fc3_;
};

class BasicBlock : public torch::nn::Module {
 public:
  BasicBlock(std::int64_t in, std::int64_t out, std::int64_t stride) {
    conv1_ = register_module("conv1", Conv(in, out, 3, stride));
    bn1_ = register_module("bn1", BatchNorm2d(out));
    conv2_ = register_module("conv2", Conv(out, out, 3));
    bn2_ = register_module("bn2", BatchNorm2d(out));
    if (stride != 1 || in != out) {
      shortcut_ = register_module("shortcut", Conv(in, out, 1, stride));
      bn_s_ = register_module("bn_s", BatchNorm2d(out));
    }
  }
  std::vector<FoldPair> fold_pairs() const {
    std::vector<FoldPair> p = {{conv1_, bn1_}, {conv2_, bn2_}};
    if (shortcut_) p.emplace_back(shortcut_, bn_s_);
    return p;
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = torch::relu(bn1_->forward(conv1_->forward(x)));
    h = bn2_->forward(conv2_->forward(h));
    at::Tensor s = shortcut_ ? bn_s_->forward(shortcut_->forward(x)) : x;
    return torch::relu(h + s);
  }

 private:
  std::shared_ptr<QuantLayer> conv1_, conv2_, shortcut_;
  Bn bn1_, bn2_, bn_s_;
};

class ResNet20 : public QuantModel {
 public:
  explicit ResNet20(const ModelShape& s) {
    stem_ = register_module("stem", Conv(s.channels, 16, 3));
    bn_ = register_module("bn", BatchNorm2d(16));
    FoldsInto(stem_, bn_);
    std::int64_t in = 16;
    const std::int64_t widths[] = {16, 32, 64};
    for (int stage = 0; stage < 3; ++stage) {
      for (int b = 0; b < 3; ++b) {
        const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        blocks_.push_back(register_module(absl::StrCat("stage", stage + 1, "_", b),
                                          std::make_shared<BasicBlock>(in, widths[stage], stride)));
        FoldsInto(blocks_.back()->fold_pairs());
        in = widths[stage];
      }
    }
    fc_ = register_module("fc", Fc(64, s.classes));
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = torch::relu(bn_->forward(stem_->forward(x)));
    for (auto& b : blocks_) h = b->forward(h);
    return fc_->forward(torch::adaptive_avg_pool2d(h, {1, 1}).flatten(1));
  }

 private:
  std::shared_ptr<QuantLayer> stem_, fc_;
  Bn bn_;
  std::vector<std::shared_ptr<BasicBlock>> blocks_;
};

class VggSmall : public QuantModel {
 public:
  explicit VggSmall(const ModelShape& s) {
    const std::int64_t widths[] = {32, 32, 64, 64, 128, 128};
    std::int64_t in = s.channels;
    for (int i = 0; i < 6; ++i) {
      convs_.push_back(register_module(absl::StrCat("conv", i + 1), Conv(in, widths[i], 3)));
      bns_.push_back(register_module(absl::StrCat("bn", i + 1), BatchNorm2d(widths[i])));
      FoldsInto(convs_.back(), bns_.back());
      in = widths[i];
    }
    fc_ = register_module("fc", Fc(128, s.classes));
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = x;
    for (size_t i = 0; i < convs_.size(); ++i) {
      h = torch::relu(bns_[i]->forward(convs_[i]->forward(h)));
      if (i % 2 == 1) h = torch::max_pool2d(h, 2);
    }
    return fc_->forward(torch::adaptive_avg_pool2d(h, {1, 1}).flatten(1));
  }

 private:
  std::vector<std::shared_ptr<QuantLayer>> convs_;
  std::vector<Bn> bns_;
  std::shared_ptr<QuantLayer> fc_;
};

class InvertedResidual : public torch::nn::Module {
 public:
  InvertedResidual(std::int64_t in, std::int64_t out, std::int64_t stride, std::int64_t expand)
      : residual_(stride == 1 && in == out) {
    const std::int64_t hidden = in * expand;
    if (expand != 1) {
      expand_ = register_module("expand", Conv(in, hidden, 1));
      bn0_ = register_module("bn0", BatchNorm2d(hidden));
    }
    dw_ = register_module("dw", Conv(hidden, hidden, 3, stride, hidden));
    bn1_ = register_module("bn1", BatchNorm2d(hidden));
    project_ = register_module("project", Conv(hidden, out, 1));
    bn2_ = register_module("bn2", BatchNorm2d(out));
  }
  std::vector<FoldPair> fold_pairs() const {
    std::vector<FoldPair> p = {{dw_, bn1_}, {project_, bn2_}};
    if (expand_) p.emplace_back(expand_, bn0_);
    return p;
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = x;
    if (expand_) h = torch::relu6(bn0_->forward(expand_->forward(h)));
    h = torch::relu6(bn1_->forward(dw_->forward(h)));
    h = bn2_->forward(project_->forward(h));  // linear bottleneck: signed output
    return residual_ ? h + x : h;
  }

 private:
  bool residual_;
  std::shared_ptr<QuantLayer> expand_, dw_, project_;
  Bn bn0_, bn1_, bn2_;
};

class MobileNetV2Tiny : public QuantModel {
 public:
  explicit MobileNetV2Tiny(const ModelShape& s) {
    stem_ = register_module("stem", Conv(s.channels, 16, 3));
    bn_ = register_module("bn", BatchNorm2d(16));
    FoldsInto(stem_, bn_);
    struct Stage { std::int64_t expand, out, repeat, stride; };
    const Stage stages[] = {{1, 16, 1, 1}, {4, 24, 2, 2}, {4, 32, 2, 2}, {4, 64, 1, 2}};
    std::int64_t in = 16;
    int index = 0;
    for (const Stage& st : stages) {
      for (std::int64_t r = 0; r < st.repeat; ++r) {
        blocks_.push_back(register_module(
            absl::StrCat("block", index++),
            std::make_shared<InvertedResidual>(in, st.out, r == 0 ? st.stride : 1, st.expand)));
        FoldsInto(blocks_.back()->fold_pairs());
        in = st.out;
      }
    }
    head_ = register_module("head", Conv(in, 128, 1));
    bn_head_ = register_module("bn_head", BatchNorm2d(128));
    FoldsInto(head_, bn_head_);
    fc_ = register_module("fc", Fc(128, s.classes));
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = torch::relu6(bn_->forward(stem_->forward(x)));
    for (auto& b : blocks_) h = b->forward(h);
    h = torch::relu6(bn_head_->forward(head_->forward(h)));
    return fc_->forward(torch::adaptive_avg_pool2d(h, {1, 1}).flatten(1));
  }

 private:
  std::shared_ptr<QuantLayer> stem_, head_, fc_;
  Bn bn_, bn_head_;
  std::vector<std::shared_ptr<InvertedResidual>> blocks_;
};

}  // namespace

FoldableBatchNorm::FoldableBatchNorm(std::int64_t channels) {
  weight_ = register_parameter("weight", at::ones({channels}));
  bias_ = register_parameter("bias", at::zeros({channels}));
  running_mean_ = register_buffer("running_mean", at::zeros({channels}));
  running_var_ = register_buffer("running_var", at::ones({channels}));
}

at::Tensor FoldableBatchNorm::forward(const at::Tensor& x) {
  if (folded_) return x;
  if (quantizers::Replicas* r = quantizers::ActiveReplicas(); r != nullptr && is_training()) return Synced(*r, x);
  return at::batch_norm(x, weight_, bias_, running_mean_, running_var_, is_training(), kMomentum, kEps,
                        /*cudnn_enabled=*/false);
}

// Batch norm over the whole batch when each replica holds a share of it: the first two
// moments of every channel, taken about the running mean (against cancellation), are
// summed over the replicas in one collective, and through SumWithGrad the gradient
// reaches every share's inputs (one more collective in the backward pass).
at::Tensor FoldableBatchNorm::Synced(quantizers::Replicas& r, const at::Tensor& x) {
  const std::vector<std::int64_t> dims = {0, 2, 3};
  const std::int64_t c = x.size(1);
  at::Tensor shifted = x - running_mean_.detach().reshape({1, -1, 1, 1});
  at::Tensor local = at::cat({shifted.sum(dims), shifted.pow(2).sum(dims),
                              at::full({1}, static_cast<double>(x.numel() / c), x.options())});
  at::Tensor total = r.SumWithGrad(local);
  const double n = total[2 * c].item<double>();
  at::Tensor shift_mean = total.slice(0, 0, c) / n;
  at::Tensor var = (total.slice(0, c, 2 * c) / n - shift_mean.pow(2)).clamp_min(0);
  at::Tensor mean = running_mean_.detach() + shift_mean;
  {
    torch::NoGradGuard ng;
    running_mean_.mul_(1 - kMomentum).add_(mean.detach(), kMomentum);
    running_var_.mul_(1 - kMomentum).add_(var.detach() * (n / std::max(n - 1, 1.0)), kMomentum);
  }
  at::Tensor scale = weight_ * at::rsqrt(var + kEps);
  return (shifted - shift_mean.reshape({1, -1, 1, 1})) * scale.reshape({1, -1, 1, 1}) + bias_.reshape({1, -1, 1, 1});
}

void FoldableBatchNorm::FoldInto(QuantLayer& conv) {
  if (folded_) return;
  torch::NoGradGuard ng;
  at::Tensor scale = weight_ / at::sqrt(running_var_ + kEps);
  at::Tensor w = conv.weight();
  w.mul_(scale.reshape({-1, 1, 1, 1}));
  at::Tensor b = conv.EnsureBias();
  b.copy_(bias_ + (b - running_mean_) * scale);
  // The affine map now lives in the convolution; these stay only so checkpoints keep
  // one layout, and no optimiser should move them.
  weight_.set_requires_grad(false);
  bias_.set_requires_grad(false);
  folded_ = true;
}

int QuantModel::FoldBatchNorm() {
  if (folded_) return 0;
  folded_ = true;
  for (auto& [conv, bn] : fold_pairs_) bn->FoldInto(*conv);
  return static_cast<int>(fold_pairs_.size());
}

std::map<std::string, at::Tensor> QuantModel::DeployState(const std::map<std::string, at::Tensor>& fake_quantized) {
  std::map<std::string, at::Tensor> state;
  for (const auto& p : named_parameters()) state[p.key()] = p.value().detach();
  for (const auto& b : named_buffers()) state[b.key()] = b.value().detach();
  for (const auto& [name, w] : fake_quantized) {
    state[name + ".weight"] = w;
    // The weight quantizer's own state (e.g. LSQ's step) is baked into the weight.
    const std::string prefix = name + ".wq.";
    for (auto it = state.lower_bound(prefix); it != state.end() && it->first.rfind(prefix, 0) == 0;) it = state.erase(it);
  }
  return state;
}

std::vector<NamedLayer> QuantModel::QuantLayers() {
  std::vector<NamedLayer> out;
  for (const auto& item : named_modules("", /*include_self=*/false)) {
    if (auto q = std::dynamic_pointer_cast<QuantLayer>(item.value())) out.emplace_back(item.key(), q);
  }
  return out;
}

c10::Device QuantModel::device() const {
  const auto params = parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().device();
}

void QuantModel::Profile(const at::Tensor& sample) {
  const auto layers = QuantLayers();
  for (auto& [name, layer] : layers) layer->StartProfiling();
  torch::NoGradGuard ng;
  const bool was_training = is_training();
  eval();
  forward(sample);
  train(was_training);
  for (auto& [name, layer] : layers) layer->StopProfiling();
}

std::vector<std::string> ZooModels() {
  return {"mlp", "lenet5", "resnet20", "vgg_small", "mobilenetv2_tiny"};
}

absl::StatusOr<std::shared_ptr<QuantModel>> BuildModel(const std::string& name,
                                                       const ModelShape& s) {
  if (s.channels < 1 || s.classes < 2 || s.height < 8 || s.width < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model input must be at least 8x8 with >= 1 channel and >= 2 classes (got ", s.channels,
        "x", s.height, "x", s.width, ", ", s.classes, " classes)"));
  }
  if (name == "mlp") return std::shared_ptr<QuantModel>(std::make_shared<Mlp>(s));
  if (name == "lenet5") {
    if (s.height < 16 || s.width < 16) {
      return absl::InvalidArgumentError("lenet5 needs images of at least 16x16");
    }
    return std::shared_ptr<QuantModel>(std::make_shared<LeNet5>(s));
  }
  if (name == "resnet20") return std::shared_ptr<QuantModel>(std::make_shared<ResNet20>(s));
  if (name == "vgg_small") return std::shared_ptr<QuantModel>(std::make_shared<VggSmall>(s));
  if (name == "mobilenetv2_tiny") {
    return std::shared_ptr<QuantModel>(std::make_shared<MobileNetV2Tiny>(s));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown model '", name, "'; the zoo has ",
                                                 absl::StrJoin(ZooModels(), ", ")));
}

}  // namespace qsearch::search
