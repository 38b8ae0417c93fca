// Sensitivity-based allocation, HAWQ-style: a layer's error at a weight width is
//   Omega_l(b) = F_l * ||W_l - Q_b(W_l)||^2,
// with F_l the empirical Fisher of the loss with respect to the layer's weights (the mean
// squared gradient over batches of the training split: a cheap, positive stand-in for the
// Hessian trace per weight). Activations, when their widths are learned, add
// act_elems_l * 2^(-2 b_a) * mean(F) (the uniform-noise model). The exact solver
// (allocation.h) then picks the widths, and with several schemes the best scheme at each
// width, that minimise the summed error within the budget.
//
// Used four ways: as a fast search mode (no QSS/QPL epochs), as a baseline trained on the
// search's schedule, after QPL in place of greedy rounding and repair, and in the default
// pipeline right after QSS, where F_l is the mean of the same squared weight gradients over
// the batches of QSS's last epoch that held its last kFisherSamples images (train mode,
// the scheme mixture) instead of a pass of its own.
#ifndef QSEARCH_SEARCH_SENSITIVITY_H_
#define QSEARCH_SEARCH_SENSITIVITY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "search/job_context.h"

namespace qsearch::search {

// Images the Fisher is measured on, by default.
inline constexpr std::int64_t kFisherSamples = 1024;

// Mean squared gradient of the loss per weight, per layer of `layers`, over up to
// `max_samples` images of `data` in eval mode (the model's state is left as it was).
absl::StatusOr<std::vector<double>> WeightFisher(QuantModel& model, const std::vector<NamedLayer>& layers,
                                                 const TensorDataset& data, std::int64_t batch_size,
                                                 std::int64_t max_samples);

// Adds each layer's mean squared weight gradient, as the last backward left it, to
// (*sums)[l] (WeightFisher's term for one batch); a layer without a gradient adds nothing.
void AddSquaredGradients(const std::vector<NamedLayer>& layers, std::vector<double>* sums);

// One layer's choice: weight and activation specs at their widths.
struct LayerChoice {
  std::string weight_spec, act_spec;
  int w_bits = 0, a_bits = 0;
};

struct SensitivityAllocation {
  std::vector<LayerChoice> choices;  // per layer of job.layers ("" specs for excluded ones)
  std::vector<double> fisher;        // per layer of job.layers (0 for excluded ones)
  double error = 0;
  std::size_t largest_frontier = 0;
};

// Widths a layer may take in an allocation; empty = every width QPL may use (bit_widths.h).
struct WidthLimits {
  std::vector<std::vector<int>> weight, act;  // per layer of the model, or empty
};

// The least-error policy within the job's budget: for each selected layer one of
// `weight_schemes[l]` (spec strings; their bits are replaced) at a width QPL may use, and
// `act_specs[l]` at the job's activation width (or learned widths). Uses the model's
// current weights and the Fisher `fisher`. InvalidArgument when no choice fits,
// ResourceExhausted when the exact solver gives up (allocation.h).
absl::StatusOr<SensitivityAllocation> Allocate(JobContext& job, QuantModel& model, const std::vector<double>& fisher,
                                               const std::vector<std::vector<std::string>>& weight_schemes,
                                               const std::vector<std::string>& act_specs,
                                               const WidthLimits& limits = {});

// search_mode "sensitivity": measures the Fisher of the pre-trained model and fixes the
// allocation over the QSS weight candidates (uniform activations at the job's width) in
// job.model, job.w_chosen / a_chosen and job.sensitivity; an event with the policy.
absl::Status RunAllocation(JobContext& job);

// The activation spec a layer gets outside QSS: uniform, signed when its input is, at
// `bits`.
std::string UniformActSpec(const QuantLayer& layer, double bits);

// Fixes `choices` in `model`'s layers (excluded ones stay float).
absl::Status ApplyChoices(const JobContext& job, QuantModel& model, const std::vector<LayerChoice>& choices);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_SENSITIVITY_H_
