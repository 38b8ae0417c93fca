// QuantLayer modes and the composite (one convolution per layer) forward.
#include "search/qlayer.h"

#include <cmath>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "quantizers/composite.h"
#include "quantizers/row_stats.h"
#include "search/narrow_conv.h"

namespace qsearch::search {
namespace {

using quantizers::FracBitsQuantizer;
using quantizers::MakeQuantizer;
using quantizers::Quantizer;

// Logit s with lo + (hi - lo) * sigmoid(s) == value.
double InverseBits(double value, double lo, double hi) {
  if (hi <= lo) return 0;
  const double p = std::min(std::max((value - lo) / (hi - lo), 1e-3), 1 - 1e-3);
  return std::log(p / (1 - p));
}

// `m` moved to the device `like` is on: a quantizer's state lives with the layer's weight.
template <typename M>
std::shared_ptr<M> OnDeviceOf(const at::Tensor& like, std::shared_ptr<M> m) {
  m->to(like.device());
  return m;
}

}  // namespace

at::TensorOptions QuantLayer::Float() const { return weight_.options(); }

QuantLayer::QuantLayer(std::int64_t in, std::int64_t out, std::int64_t kernel,
                       std::int64_t stride, std::int64_t padding, std::int64_t groups, bool bias)
    : kernel_(kernel), stride_(stride), padding_(padding), groups_(groups) {
  const std::int64_t fan_in = kernel > 0 ? in / groups * kernel * kernel : in;
  const double bound = std::sqrt(6.0 / fan_in);  // Kaiming-uniform for ReLU nets
  at::Tensor w = kernel > 0 ? at::empty({out, in / groups, kernel, kernel}) : at::empty({out, in});
  weight_ = register_parameter("weight", w.uniform_(-bound, bound));
  if (bias) bias_ = register_parameter("bias", at::zeros({out}));
  geometry_.kind = kernel > 0 ? "conv2d" : "linear";
  geometry_.params = w.numel();
}

QuantLayer::QuantLayer(at::Tensor weight) : kernel_(-1), stride_(1), padding_(0), groups_(1) {
  weight_ = register_parameter("weight", std::move(weight));
  geometry_.kind = weight_.dim() == 4 ? "conv2d" : "linear";
  geometry_.params = weight_.numel();
}

at::Tensor QuantLayer::EnsureBias() {
  if (!bias_.defined()) bias_ = register_parameter("bias", at::zeros({weight_.size(0)}, Float()));
  return bias_;
}

at::Tensor QuantLayer::Apply(const at::Tensor& x, const at::Tensor& w) const {
  if (kernel_ > 0) return LayerConv2d(x, w, bias_, {stride_, stride_}, {padding_, padding_}, {1, 1}, groups_);
  return at::linear(x, w, bias_);
}

at::Tensor QuantLayer::Mixture(const at::Tensor& logits) const {
  at::Tensor z = logits / temperature_;
  if (!gumbel_ || !is_training()) return at::softmax(z, 0);
  // Straight-through Gumbel-softmax (DNAS): the forward pass uses one sampled candidate,
  // so each candidate's loss is seen on its own; gradients flow through the soft sample.
  at::Tensor u = at::rand_like(logits).clamp(1e-6, 1 - 1e-6);
  at::Tensor soft = at::softmax(z - at::log(-at::log(u)) / temperature_, 0);
  at::Tensor hard = at::zeros_like(soft).index_fill_(0, soft.argmax().reshape({1}), 1.0);
  return hard - soft.detach() + soft;
}

at::Tensor QuantLayer::QuantizeWeight(const at::Tensor& w) {
  switch (mode_) {
    case QuantMode::kFloat:
    case QuantMode::kDeployed:
      return w;
    case QuantMode::kSearch: {
      std::vector<quantizers::PointForm> forms;
      quantizers::RowStatsScope shared_stats;  // the candidates read one pass of statistics
      for (auto& q : w_cands_) forms.push_back(q->Prepare(w));
      return quantizers::MixForms(w, std::move(forms), Mixture(alpha_));
    }
    case QuantMode::kPrecision:
      return w_frac_->Forward(w, WeightBits());
    case QuantMode::kFixed:
      return fixed_w_->forward(w);
  }
  return w;
}

at::Tensor QuantLayer::QuantizeInput(const at::Tensor& x) {
  if (profiling_) {
    geometry_.act_elems += x[0].numel();
    geometry_.input_signed = geometry_.input_signed || x.min().item<float>() < 0;
    ++profiled_calls_;
  }
  switch (mode_) {
    case QuantMode::kFloat:
      return x;
    case QuantMode::kSearch: {
      std::vector<quantizers::PointForm> forms;
      for (auto& q : a_cands_) forms.push_back(q->Prepare(x));
      return quantizers::MixForms(x, std::move(forms), Mixture(beta_));
    }
    case QuantMode::kPrecision:
      return a_frac_ ? a_frac_->Forward(x, ActBits()) : x;
    case QuantMode::kFixed:
    case QuantMode::kDeployed:
      return fixed_a_->forward(x);
  }
  return x;
}

void QuantLayer::RecordOutput(const at::Tensor& y) {
  if (!profiling_) return;
  // Each output element costs one MAC per weight element of its output channel.
  geometry_.macs += y[0].numel() * weight_[0].numel();
}

void QuantLayer::StartProfiling() {
  profiling_ = true;
  profiled_calls_ = 0;
  geometry_.macs = geometry_.act_elems = 0;
  geometry_.input_signed = false;
}

void QuantLayer::StopProfiling() {
  profiling_ = false;
  // A layer the sample never reached (an untaken branch) may see anything: assume signed.
  if (profiled_calls_ == 0) geometry_.input_signed = true;
}

at::Tensor QuantLayer::forward(const at::Tensor& input) {
  TORCH_CHECK(kernel_ >= 0, "this QuantLayer quantizes a TorchScript model's layer; that model runs the layer");
  at::Tensor w = QuantizeWeight(weight_);  // weights first: the order Gumbel noise is drawn in
  at::Tensor x = QuantizeInput(input);
  at::Tensor out = Apply(x, w);
  RecordOutput(out);
  return out;
}

absl::Status QuantLayer::SetSearch(const std::vector<std::string>& weight_specs,
                                   const std::vector<std::string>& act_specs) {
  if (weight_specs.empty() || act_specs.empty()) {
    return absl::InvalidArgumentError("QSS needs at least one weight and one activation candidate");
  }
  for (size_t i = 0; i < w_cands_.size(); ++i) unregister_module(absl::StrCat("wc", i));
  for (size_t i = 0; i < a_cands_.size(); ++i) unregister_module(absl::StrCat("ac", i));
  w_cands_.clear();
  a_cands_.clear();
  for (const auto& s : weight_specs) {
    ASSIGN_OR_RETURN(auto q, MakeQuantizer(s));
    if (q->role() != quantizers::Role::kWeight) {
      return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not a weight scheme"));
    }
    RETURN_IF_ERROR(q->ValidateShape(weight_));
    w_cands_.push_back(register_module(absl::StrCat("wc", w_cands_.size()), OnDeviceOf(weight_, q)));
  }
  for (const auto& s : act_specs) {
    ASSIGN_OR_RETURN(auto q, MakeQuantizer(s));
    if (q->role() != quantizers::Role::kActivation) {
      return absl::InvalidArgumentError(absl::StrCat("'", s, "' is not an activation scheme"));
    }
    a_cands_.push_back(register_module(absl::StrCat("ac", a_cands_.size()), OnDeviceOf(weight_, q)));
  }
  w_specs_ = weight_specs;
  a_specs_ = act_specs;
  if (!alpha_.defined() || alpha_.numel() != static_cast<std::int64_t>(weight_specs.size())) {
    alpha_ = register_parameter("arch_alpha", at::zeros({static_cast<std::int64_t>(weight_specs.size())}, Float()));
  }
  if (!beta_.defined() || beta_.numel() != static_cast<std::int64_t>(act_specs.size())) {
    beta_ = register_parameter("arch_beta", at::zeros({static_cast<std::int64_t>(act_specs.size())}, Float()));
  }
  mode_ = QuantMode::kSearch;
  return absl::OkStatus();
}

void QuantLayer::ShareLogits(const at::Tensor& alpha, const at::Tensor& beta) {
  // Model-wide search: every layer reads the same logits (registered on the model).
  alpha_ = alpha;
  beta_ = beta;
}

int QuantLayer::ChosenWeight() const { return static_cast<int>(alpha_.argmax().item<std::int64_t>()); }
int QuantLayer::ChosenAct() const { return static_cast<int>(beta_.argmax().item<std::int64_t>()); }

at::Tensor QuantLayer::WeightBits() const {
  return w_lo_ + (w_hi_ - w_lo_) * at::sigmoid(w_bit_logit_).reshape({});
}

at::Tensor QuantLayer::ActBits() const {
  if (!learn_act_) return at::full({}, a_fixed_, Float());
  return a_lo_ + (a_hi_ - a_lo_) * at::sigmoid(a_bit_logit_).reshape({});
}

absl::Status QuantLayer::SetPrecision(const std::string& weight_spec, const std::string& act_spec,
                                      double w_lo, double w_hi, double w_init, double a_lo,
                                      double a_hi, double a_init, bool learn_act) {
  ASSIGN_OR_RETURN(quantizers::SpecValues wv, quantizers::ParseSpec(weight_spec));
  ASSIGN_OR_RETURN(quantizers::SpecValues av, quantizers::ParseSpec(act_spec));
  if (w_hi < w_lo || a_hi < a_lo) return absl::InvalidArgumentError("empty bit range");
  w_frac_ = std::make_shared<FracBitsQuantizer>(wv);
  a_frac_ = std::make_shared<FracBitsQuantizer>(av);
  if (auto c = named_children(); c.contains("wf")) unregister_module("wf");
  if (auto c = named_children(); c.contains("af")) unregister_module("af");
  register_module("wf", OnDeviceOf(weight_, w_frac_));
  register_module("af", OnDeviceOf(weight_, a_frac_));
  w_frac_->Prebuild(w_lo, w_hi);
  a_frac_->Prebuild(learn_act ? a_lo : a_init, learn_act ? a_hi : a_init);
  w_lo_ = w_lo;
  w_hi_ = w_hi;
  a_lo_ = a_lo;
  a_hi_ = a_hi;
  a_fixed_ = a_init;
  learn_act_ = learn_act;
  if (!w_bit_logit_.defined()) {
    w_bit_logit_ = register_parameter("bits_w", at::zeros({1}, Float()));
    a_bit_logit_ = register_parameter("bits_a", at::zeros({1}, Float()), /*requires_grad=*/learn_act);
  }
  {
    at::NoGradGuard ng;
    w_bit_logit_.fill_(InverseBits(w_init, w_lo, w_hi));
    a_bit_logit_.fill_(InverseBits(a_init, a_lo, a_hi));
  }
  mode_ = QuantMode::kPrecision;
  return absl::OkStatus();
}

absl::Status QuantLayer::SetDeployed(const std::string& weight_spec, const std::string& act_spec) {
  RETURN_IF_ERROR(SetFixed(weight_spec, act_spec));
  unregister_module("wq");
  fixed_w_.reset();
  mode_ = QuantMode::kDeployed;
  return absl::OkStatus();
}

void QuantLayer::DropSearchState() {
  // A fixed layer keeps only what the policy's model has, so its state is the one a user
  // loads from the quantized checkpoint.
  for (size_t i = 0; i < w_cands_.size(); ++i) unregister_module(absl::StrCat("wc", i));
  for (size_t i = 0; i < a_cands_.size(); ++i) unregister_module(absl::StrCat("ac", i));
  w_cands_.clear();
  a_cands_.clear();
  const auto children = named_children();
  if (children.contains("wf")) unregister_module("wf");
  if (children.contains("af")) unregister_module("af");
  w_frac_.reset();
  a_frac_.reset();
  for (const char* name : {"arch_alpha", "arch_beta", "bits_w", "bits_a"}) {
    if (parameters_.contains(name)) parameters_.erase(name);
  }
  alpha_ = beta_ = w_bit_logit_ = a_bit_logit_ = at::Tensor();
}

absl::Status QuantLayer::SetFixed(const std::string& weight_spec, const std::string& act_spec) {
  ASSIGN_OR_RETURN(auto w, MakeQuantizer(weight_spec));
  ASSIGN_OR_RETURN(auto a, MakeQuantizer(act_spec));
  if (w->role() != quantizers::Role::kWeight || a->role() != quantizers::Role::kActivation) {
    return absl::InvalidArgumentError(absl::StrCat("fixed policy needs a weight scheme and an "
                                                   "activation scheme, got '", weight_spec,
                                                   "' and '", act_spec, "'"));
  }
  RETURN_IF_ERROR(w->ValidateShape(weight_));
  if (auto c = named_children(); c.contains("wq")) unregister_module("wq");
  if (auto c = named_children(); c.contains("aq")) unregister_module("aq");
  fixed_w_ = register_module("wq", OnDeviceOf(weight_, w));
  fixed_a_ = register_module("aq", OnDeviceOf(weight_, a));
  fixed_w_spec_ = fixed_w_->ToSpec();
  fixed_a_spec_ = fixed_a_->ToSpec();
  DropSearchState();
  if (!is_training()) {
    fixed_w_->eval();
    fixed_a_->eval();
  }
  mode_ = QuantMode::kFixed;
  return absl::OkStatus();
}

}  // namespace qsearch::search
