// Job specs: the documented defaults (applied once, where a job is accepted), validation,
// and the model a spec names. Contract: WithDefaults is idempotent and fills only unset
// fields; ValidateSpec checks a spec WithDefaults produced, without loading anything heavy,
// and names the field at fault (InvalidArgument).
#ifndef QSEARCH_SEARCH_SPEC_H_
#define QSEARCH_SEARCH_SPEC_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/v1/job.pb.h"
#include "search/models.h"

namespace qsearch::search {

// The baselines a job can train, in the order it trains them.
inline constexpr const char* kBaselineOrder[] = {"float", "uniform", "uniform_first_last_8", "sensitivity"};

// Fills unset fields of a spec with the defaults documented at each field of
// qsearch/v1/job.proto. WithDefaults(WithDefaults(s)) == WithDefaults(s).
v1::JobSpec WithDefaults(v1::JobSpec spec);

// The most data-parallel processes one job may run (JobSpec.world_size).
inline constexpr int kMaxWorldSize = 8;

// Checks a spec (after WithDefaults): model name, candidate specs, budget, option ranges.
absl::Status ValidateSpec(const v1::JobSpec& spec);

// At most this many images pass through training in one job (epochs x images, baselines
// included): a bound a spec cannot lift.
inline constexpr double kMaxTrainingImages = 1e10;
// ResourceExhausted when training on `train_images` images would pass that bound.
absl::Status CheckTrainingVolume(const v1::JobSpec& spec, std::int64_t train_images);

// The job's model: the TorchScript file when the spec names one, else the zoo model.
absl::StatusOr<std::shared_ptr<QuantModel>> MakeModel(const v1::JobSpec& spec, const ModelShape& shape);

// Default QSS candidate sets at a width: uniform, ESB, power-of-two and ul2q for weights
// (per channel); uniform, PACT and LSQ for activations.
std::vector<std::string> DefaultWeightCandidates(int bits = 4);
std::vector<std::string> DefaultActivationCandidates(int bits = 4);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_SPEC_H_
