// QuantLayer: a Conv2d or Linear whose weight and input activation pass through
// quantizers. The same layer serves every phase of a job:
//   kFloat      plain layer (pre-training, excluded layers)
//   kSearch     QSS: mixtures over weight and activation candidates with softmax
//               (or Gumbel-softmax) weights from learned logits; one convolution per layer
//               on the mixed weight and mixed input (EdMIPS's composite trick)
//   kPrecision  QPL: the chosen schemes at learned real bit widths (FracBits)
//   kFixed      a fixed integer policy (fine-tuning, evaluation, export)
//   kDeployed   the weight already holds quantized values (a loaded quantized checkpoint);
//               only the input activation is quantized
#ifndef QSEARCH_SEARCH_QLAYER_H_
#define QSEARCH_SEARCH_QLAYER_H_

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "absl/status/status.h"
#include "quantizers/fractional.h"
#include "quantizers/quantizer.h"

namespace qsearch::search {

enum class QuantMode { kFloat, kSearch, kPrecision, kFixed, kDeployed };

struct LayerGeometry {
  std::string kind;            // "conv2d" or "linear"
  std::int64_t params = 0;     // weight elements
  std::int64_t macs = 0;       // per sample
  std::int64_t act_elems = 0;  // input elements per sample
  bool input_signed = true;    // the input takes negative values
};

class QuantLayer : public torch::nn::Module {
 public:
  // Conv2d (kernel k x k) when `kernel` > 0, else Linear(in, out).
  QuantLayer(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride = 1,
             std::int64_t padding = 0, std::int64_t groups = 1, bool bias = true);

  // A layer of a TorchScript model: `weight` is the model's own parameter tensor (shared,
  // not copied). The model runs the convolution or product itself and calls QuantizeWeight
  // / QuantizeInput / RecordOutput around it; forward() is not for such layers.
  explicit QuantLayer(at::Tensor weight);

  at::Tensor forward(const at::Tensor& x);
  // The two halves of forward's quantization, in the current mode.
  at::Tensor QuantizeWeight(const at::Tensor& w);
  at::Tensor QuantizeInput(const at::Tensor& x);
  // Ends a profiling pass (QuantizeInput recorded the input) with the layer's output.
  void RecordOutput(const at::Tensor& y);

  QuantMode mode() const { return mode_; }
  void SetFloat() { mode_ = QuantMode::kFloat; }
  // Candidates are spec strings; logits start equal. InvalidArgument for bad specs.
  absl::Status SetSearch(const std::vector<std::string>& weight_specs,
                         const std::vector<std::string>& act_specs);
  // QPL: `weight_spec`/`act_spec` name the schemes; bits = lo + (hi-lo)*sigmoid(s).
  // Activation bits stay at `act_bits` unless learn_act.
  absl::Status SetPrecision(const std::string& weight_spec, const std::string& act_spec,
                            double w_lo, double w_hi, double w_init, double a_lo, double a_hi,
                            double a_init, bool learn_act);
  // Also drops the search and precision state (candidates, logits, learned widths).
  absl::Status SetFixed(const std::string& weight_spec, const std::string& act_spec);
  // `weight_spec` only documents the scheme the weight was quantized with.
  absl::Status SetDeployed(const std::string& weight_spec, const std::string& act_spec);

  // QSS state.
  void set_temperature(double t) { temperature_ = t; }
  void set_gumbel(bool g) { gumbel_ = g; }
  at::Tensor weight_logits() const { return alpha_; }
  at::Tensor act_logits() const { return beta_; }
  // Shared logits for model-wide search (all layers point at the same tensors).
  void ShareLogits(const at::Tensor& alpha, const at::Tensor& beta);
  const std::vector<std::string>& weight_candidates() const { return w_specs_; }
  const std::vector<std::string>& act_candidates() const { return a_specs_; }
  int ChosenWeight() const;
  int ChosenAct() const;

  // QPL state: current real bit widths (differentiable tensors) and their ranges.
  at::Tensor WeightBits() const;
  at::Tensor ActBits() const;
  bool learns_act_bits() const { return learn_act_; }

  // Fixed state.
  const std::string& weight_spec() const { return fixed_w_spec_; }
  const std::string& act_spec() const { return fixed_a_spec_; }
  quantizers::Quantizer* fixed_weight_quantizer() { return fixed_w_.get(); }
  quantizers::Quantizer* fixed_act_quantizer() { return fixed_a_.get(); }

  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }
  // The bias, registered as a zero parameter first when the layer had none (BN folding).
  at::Tensor EnsureBias();
  bool is_conv() const { return kernel_ > 0; }

  // Records geometry over the forward passes until StopProfiling (used once, on a sample
  // batch). A layer called at several places (a shared module, a loop) adds up the MACs
  // and input elements of every call; its input is signed when any call's is.
  void StartProfiling();
  void StopProfiling();
  const LayerGeometry& geometry() const { return geometry_; }

 private:
  // Options for new float state (logits, widths): the weight's dtype and device.
  at::TensorOptions Float() const;
  at::Tensor Apply(const at::Tensor& x, const at::Tensor& w) const;
  at::Tensor Mixture(const at::Tensor& logits) const;
  void DropSearchState();

  std::int64_t kernel_, stride_, padding_, groups_;
  at::Tensor weight_, bias_;
  QuantMode mode_ = QuantMode::kFloat;
  LayerGeometry geometry_;
  bool profiling_ = false;
  int profiled_calls_ = 0;

  // kSearch
  std::vector<std::string> w_specs_, a_specs_;
  std::vector<std::shared_ptr<quantizers::Quantizer>> w_cands_, a_cands_;
  at::Tensor alpha_, beta_;
  double temperature_ = 1.0;
  bool gumbel_ = false;

  // kPrecision
  std::shared_ptr<quantizers::FracBitsQuantizer> w_frac_, a_frac_;
  at::Tensor w_bit_logit_, a_bit_logit_;
  double w_lo_ = 2, w_hi_ = 8, a_lo_ = 2, a_hi_ = 8, a_fixed_ = 8;
  bool learn_act_ = false;

  // kFixed
  std::string fixed_w_spec_, fixed_a_spec_;
  std::shared_ptr<quantizers::Quantizer> fixed_w_, fixed_a_;
  int generation_ = 0;  // names for re-registered submodules
};

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_QLAYER_H_
