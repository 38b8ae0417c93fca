// The quantized checkpoint a finished job hands to the user (quantized.pt): a pickle that
// LibTorch and Python's torch.load both read, of
//   {"format": "qsearch.quantized.v1",
//    "policy": the Policy as JSON (protobuf JSON mapping),
//    "batchnorm_folded": bool,
//    "input_mean", "input_std": float [C], the normalisation the model's inputs had,
//    "state":  {name: tensor}, the model's state with each quantized layer's weight
//              replaced by its fake-quantized value and no quantizer state. For a user's
//              TorchScript model the names are the model's own (state_dict() names), so
//              model.load_state_dict(state) accepts it strictly; for a zoo model,
//              LoadQuantizedCheckpoint puts it into a fresh zoo model,
//    "layers": {layer: {"codes": uint8 [shape of weight], "levels": float [out, L],
//                       "scale": float [out],
//                       "input_scale", "input_zero_point", "input_min", "input_max":
//                       float [1], the layer's input quantizer (absent for float inputs)}}}
// Every scheme (uniform, power-of-two, ESB, ...) yields a small set of values per output
// channel, so one encoding serves them all: a per-channel codebook of levels normalised by
// the channel's largest magnitude, and integer codes indexing it:
//   weight[c][i] == levels[c][codes[c][i]] * scale[c]
// and each layer's input x becomes
//   (round(clamp(x / input_scale + input_zero_point, input_min, input_max))
//    - input_zero_point) * input_scale
#ifndef QSEARCH_SEARCH_QUANTIZED_CHECKPOINT_H_
#define QSEARCH_SEARCH_QUANTIZED_CHECKPOINT_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/v1/quantization.pb.h"
#include "search/checkpoint.h"
#include "search/models.h"

namespace qsearch::search {

struct EncodedWeight {
  at::Tensor codes;   // uint8, the weight's shape
  at::Tensor levels;  // float [out channels, max levels per channel], unused slots 0
  at::Tensor scale;   // float [out channels]
};

// InvalidArgument when a channel holds more than 256 distinct values (not quantized).
absl::StatusOr<EncodedWeight> EncodeWeight(const at::Tensor& fake_quantized);
at::Tensor DecodeWeight(const EncodedWeight& e);

// A fixed layer's weight as its quantizer outputs it in eval mode.
absl::StatusOr<at::Tensor> FakeQuantizedWeight(QuantLayer& layer);

// A fixed layer's input quantizer in eval mode as an affine map,
// q(x) = (round(clamp(x / scale + zero, lo, hi)) - zero) * scale, or the identity.
// Unimplemented (naming `name` and the scheme) for a scheme with no such form.
struct AffineActivation {
  bool identity = false;
  double scale = 1, zero = 0, lo = 0, hi = 0;
};
absl::StatusOr<AffineActivation> InputQuantizerAsAffine(QuantLayer& layer, const std::string& name);

struct QuantizedCheckpoint {
  v1::Policy policy;
  bool batchnorm_folded = false;
  TensorMap state;
  std::map<std::string, EncodedWeight> layers;
};

// `model`'s quantized layers must be in fixed mode; layers the policy marks excluded are
// exported in float and get no codes. The input normalisation comes from the policy.
absl::Status WriteQuantizedCheckpoint(const std::string& path, QuantModel& model, const v1::Policy& policy);
absl::StatusOr<QuantizedCheckpoint> ReadQuantizedCheckpoint(const std::string& path);
// Makes `model` (a fresh zoo model of the policy's kind, profiled) compute what the job's
// quantized model computed: quantized layers in deployed mode (weights as stored,
// activation quantizers from the policy), batch norms folded when they were.
absl::Status LoadQuantizedCheckpoint(QuantModel& model, const QuantizedCheckpoint& checkpoint);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_QUANTIZED_CHECKPOINT_H_
