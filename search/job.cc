// The search pipeline: pre-train, QSS, QPL + repair, fine-tune, evaluate, export.
#include "search/job.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include <torch/torch.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "quantizers/quantizer.h"
#include "quantizers/torch_status.h"
#include "search/checkpoint.h"
#include "search/cost.h"
#include "search/data.h"
#include "search/export.h"
#include "search/models.h"
#include "search/script_model.h"

namespace qsearch::search {
namespace {

using Clock = std::chrono::steady_clock;
using LayerList = std::vector<std::pair<std::string, std::shared_ptr<QuantLayer>>>;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Activation candidates for a layer whose input can be negative: schemes with a `signed`
// key switch it on; unsigned-only schemes (pact, dorefa_act) drop out.
std::vector<std::string> ForSignedInput(const std::vector<std::string>& specs) {
  std::vector<std::string> out;
  for (const auto& s : specs) {
    auto v = quantizers::ParseSpec(s);
    if (!v.ok() || v->scheme().FindParam("signed") == nullptr) continue;
    if (v->Real("bits") < 2) v->Set("bits", "2");
    v->Set("signed", "true");
    out.push_back(v->ToSpec());
  }
  if (out.empty()) out.push_back("uniform_act:bits=8,signed=true");
  return out;
}

// Spec `spec` with its bits replaced; empty when that width is invalid for the scheme
// (re-parsing applies the cross-key rules, e.g. esb's k <= bits-1).
std::string AtBits(const std::string& spec, int bits) {
  auto v = quantizers::ParseSpec(spec);
  if (!v.ok()) return "";
  v->Set("bits", std::to_string(bits));
  auto again = quantizers::ParseSpec(v->ToSpec());
  return again.ok() ? again->ToSpec() : "";
}

std::vector<int> AllowedBits(const std::string& spec, double lo, double hi) {
  std::vector<int> out;
  for (int b = static_cast<int>(std::ceil(lo)); b <= static_cast<int>(std::floor(hi)); ++b) {
    if (!AtBits(spec, b).empty()) out.push_back(b);
  }
  return out;
}

// Integer weight / activation widths QPL and repair may use for a chosen scheme: the job's
// [min_bits, max_bits] within the scheme's own range (the scheme's range alone when the
// two do not meet, e.g. binary); activations are pinned unless learned.
std::vector<int> WeightWidths(const std::string& spec, const v1::QplOptions& q) {
  const auto* p = quantizers::ParseSpec(spec)->scheme().FindParam("bits");
  std::vector<int> ok = AllowedBits(spec, std::max(q.min_bits(), p->min), std::min(q.max_bits(), p->max));
  return ok.empty() ? AllowedBits(spec, p->min, p->max) : ok;
}
std::vector<int> ActWidths(const std::string& spec, const v1::QplOptions& q) {
  if (!q.learn_activation_bits()) return {static_cast<int>(std::lround(q.activation_bits()))};
  const auto* p = quantizers::ParseSpec(spec)->scheme().FindParam("bits");
  return AllowedBits(spec, std::max(q.min_bits(), p->min), std::min(q.max_bits(), p->max));
}

// The job's model: a TorchScript file when the spec names one, else the zoo model.
absl::StatusOr<std::shared_ptr<QuantModel>> MakeModel(const v1::JobSpec& spec, const ModelShape& shape) {
  if (!spec.model_path().empty()) return LoadScriptModel(spec.model_path(), shape);
  return BuildModel(spec.model(), shape);
}

// Rejects a budget that even the lowest widths cannot meet, before any training.
absl::Status CheckFeasible(const v1::JobSpec& spec, const std::vector<LayerCost>& costs) {
  const double lo = std::max(spec.qpl().min_bits(), 1.0);
  const double act = spec.qpl().learn_activation_bits() ? lo : spec.qpl().activation_bits();
  std::vector<double> wb(costs.size(), lo), ab(costs.size(), act);
  const CostTotals floor = ComputeCost(costs, wb, ab, spec.budget().activation_memory_peak());
  if (WithinBudget(floor, spec.budget())) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "infeasible budget: at the lowest widths (%.3g-bit weights, %.3g-bit activations) "
      "the model needs %.6g weight bits (%.3f average), %.6g BitOPs and %.6g activation "
      "bits, which exceeds the limits",
      lo, act, floor.size_bits, floor.avg_bits, floor.bitops, floor.act_mem_bits));
}

// A layer filter names a module path: the layer of that name and every layer below it
// ("layer1" covers "layer1.0.conv1"), as a module holds its submodules.
bool Covers(const std::string& filter, const std::string& layer) {
  return layer == filter || (layer.size() > filter.size() && layer[filter.size()] == '.' && absl::StartsWith(layer, filter));
}
bool AnyCovers(const google::protobuf::RepeatedPtrField<std::string>& filters, const std::string& layer) {
  return std::any_of(filters.begin(), filters.end(), [&](const std::string& f) { return Covers(f, layer); });
}

// Which layers stay float (op_types / op_names / exclude_op_names / first / last) and why,
// and the cost table of the others. A layer the model has but qsearch cannot quantize
// must be kept in float by name.
absl::Status SelectLayers(const v1::JobSpec& spec, const LayerList& layers,
                          const std::vector<UnquantizedLayer>& unquantized, std::vector<bool>* excluded,
                          std::vector<std::string>* notes, std::vector<LayerCost>* costs) {
  excluded->assign(layers.size(), false);
  notes->assign(layers.size(), "");
  std::vector<std::string> names;
  for (const auto& [name, layer] : layers) names.push_back(name);
  for (const auto& u : unquantized) names.push_back(u.name);
  auto check_names = [&](const auto& list, const char* field) -> absl::Status {
    for (const auto& n : list) {
      if (std::none_of(names.begin(), names.end(), [&](const std::string& l) { return Covers(n, l); })) {
        constexpr size_t kShown = 100;
        std::vector<std::string> shown(names.begin(), names.begin() + std::min(names.size(), kShown));
        if (names.size() > kShown) shown.push_back(absl::StrCat("... (", names.size(), " in all)"));
        return absl::InvalidArgumentError(absl::StrCat(field, ": model ", spec.model(), " has no layer '", n,
                                                       "' (nor one below that path); its layers are ",
                                                       absl::StrJoin(shown, ", ")));
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_names(spec.op_names(), "op_names"));
  RETURN_IF_ERROR(check_names(spec.exclude_op_names(), "exclude_op_names"));
  for (const auto& u : unquantized) {
    const bool kept_float = AnyCovers(spec.exclude_op_names(), u.name) ||
                            (!spec.op_names().empty() && !AnyCovers(spec.op_names(), u.name));
    if (u.needs_exclusion && !kept_float) return absl::InvalidArgumentError(u.reason);
  }
  std::set<std::string> types;
  for (const auto& t : spec.op_types()) types.insert(absl::AsciiStrToLower(t));
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& [name, layer] = layers[l];
    std::string& why = (*notes)[l];
    if (!spec.op_names().empty() && !AnyCovers(spec.op_names(), name)) why = "not selected by op_names";
    if (AnyCovers(spec.exclude_op_names(), name)) why = "excluded by exclude_op_names";
    if (!types.empty() && !types.count(layer->geometry().kind)) why = "op type not selected by op_types";
  }
  if (spec.exclude_first() && !layers.empty()) notes->front() = "first layer (exclude_first)";
  if (spec.exclude_last() && !layers.empty()) notes->back() = "last layer (exclude_last)";
  costs->clear();
  for (size_t l = 0; l < layers.size(); ++l) {
    (*excluded)[l] = !(*notes)[l].empty();
    if ((*excluded)[l]) continue;
    const auto& g = layers[l].second->geometry();
    costs->push_back({layers[l].first, g.params, g.macs, g.act_elems});
  }
  if (costs->empty()) {
    return absl::InvalidArgumentError("the layer selection (op_types, op_names, exclude_*) leaves nothing to quantize");
  }
  return absl::OkStatus();
}

// Phases in the order a job runs them (the enum's numbers are not that order).
int PhaseOrder(v1::Phase p) {
  static constexpr v1::Phase kOrder[] = {
      v1::PHASE_LOADING,  v1::PHASE_PRETRAIN, v1::PHASE_QSS,
      v1::PHASE_QPL,      v1::PHASE_FINETUNE, v1::PHASE_EVALUATE,
      v1::PHASE_FLOAT_BASELINE, v1::PHASE_BASELINE, v1::PHASE_EXPORT, v1::PHASE_DONE};
  for (size_t i = 0; i < std::size(kOrder); ++i) {
    if (kOrder[i] == p) return static_cast<int>(i);
  }
  return -1;
}

using Optimizers = std::vector<torch::optim::Optimizer*>;

class Pipeline {
 public:
  Pipeline(const v1::JobSpec& spec, const JobOptions& options)
      : spec_(spec), options_(options), start_(Clock::now()) {}

  absl::StatusOr<v1::JobResult> Run();

 private:
  bool Cancelled() const { return options_.cancel != nullptr && options_.cancel->load(); }
  // A warning event, also kept in the result.
  void Warn(const std::string& message);
  void Emit(v1::Phase phase, int epoch, std::int64_t step, double loss, double accuracy,
            const std::string& message, const v1::Policy* policy = nullptr, bool epoch_end = false,
            bool warning = false);
  // One pass over `data`; `step_fn` gets (images, labels) and returns the batch loss.
  absl::StatusOr<double> Epoch(v1::Phase phase, int epoch, const TensorDataset& data,
                               const std::function<double(const at::Tensor&, const at::Tensor&)>& step_fn);
  double Accuracy(QuantModel& model, const TensorDataset& data);
  absl::Status TrainWeights(v1::Phase phase, QuantModel& model, int epochs);
  absl::Status SetupQss(std::vector<torch::Tensor>* arch);
  absl::Status RunQss();
  absl::Status SetupQpl(std::vector<torch::Tensor>* bit_params);
  absl::Status RunQpl();
  absl::StatusOr<v1::Policy> RoundAndRepair();
  v1::Policy CurrentPolicy();
  std::vector<torch::Tensor> WeightParams(QuantModel& model);
  // A fresh zoo model holding the pre-trained weights, folded like the searched one.
  absl::StatusOr<std::shared_ptr<QuantModel>> PretrainedCopy();
  int EpochsAfterPretrain() const;
  absl::StatusOr<double> FloatBaseline();
  absl::StatusOr<double> UniformBaseline(double* bits_out);
  absl::Status Export(const v1::JobResult& result);

  // Checkpoints. A job resumed from (phase P, epoch E) replays the cheap set-up of every
  // phase up to P so the model has the same modules, skips the training it already did,
  // loads the saved tensors and optimiser states at P's set-up, and goes on at epoch E.
  absl::Status LoadResumePoint();
  // Epoch to start `phase` at: all done before the resume point, E at it, 0 after it.
  int FirstEpoch(v1::Phase phase, int epochs) const;
  // True for a phase the checkpointed run finished.
  bool Finished(v1::Phase phase) const;
  absl::Status MaybeRestore(v1::Phase phase, const Optimizers& optimizers);
  absl::Status SaveCheckpoint(v1::Phase phase, int next_epoch, const Optimizers& optimizers);
  std::string CheckpointPath() const;

  v1::JobSpec spec_;
  JobOptions options_;
  Clock::time_point start_;
  DataSplits data_;
  std::shared_ptr<QuantModel> model_;
  std::shared_ptr<QuantModel> baseline_model_;  // while a baseline trains
  LayerList layers_;
  std::vector<bool> excluded_;
  std::vector<std::string> exclusion_notes_;  // why each excluded layer stays float
  std::vector<UnquantizedLayer> unquantized_;
  Augmentation augmentation_;
  std::vector<LayerCost> costs_;  // quantized layers only, in layer order
  std::int64_t sequence_ = 0;
  std::int64_t steps_done_ = 0, steps_total_ = 1;
  TensorMap pretrained_;
  std::vector<std::string> qss_w_, qss_a_;          // QSS's choice per layer
  std::vector<std::string> w_chosen_, a_chosen_;    // the final policy's specs
  v1::JobResult result_;
  std::optional<CheckpointData> resume_;
  bool restored_ = false;
  bool next_unnumbered_ = false;  // the next event is one only a resumed run emits
};

void Pipeline::Emit(v1::Phase phase, int epoch, std::int64_t step, double loss, double accuracy,
                    const std::string& message, const v1::Policy* policy, bool epoch_end, bool warning) {
  // Events a resumed run adds (loading again, "resumed") carry sequence 0: the numbered
  // events of a resumed run are then exactly those the uninterrupted run would emit from
  // its checkpoint on, so a consumer can drop numbers it has seen.
  const bool numbered = !next_unnumbered_;
  next_unnumbered_ = false;
  if (numbered) ++sequence_;
  if (!options_.on_event) return;
  v1::JobEvent e;
  e.set_sequence(numbered ? sequence_ : 0);
  e.set_phase(phase);
  e.set_epoch(epoch);
  e.set_step(step);
  e.set_loss(loss);
  e.set_accuracy(accuracy);
  e.set_message(message);
  e.set_epoch_end(epoch_end);
  e.set_warning(warning);
  const double elapsed = Seconds(start_);
  e.set_elapsed_seconds(elapsed);
  if (steps_done_ > 0) {
    e.set_eta_seconds(elapsed / steps_done_ * std::max<std::int64_t>(0, steps_total_ - steps_done_));
  }
  if (policy != nullptr) *e.mutable_policy() = *policy;
  options_.on_event(e);
}

void Pipeline::Warn(const std::string& message) {
  result_.add_warnings(message);
  Emit(v1::PHASE_LOADING, 0, steps_done_, 0, 0, absl::StrCat("warning: ", message), nullptr, false, /*warning=*/true);
}

absl::StatusOr<double> Pipeline::Epoch(
    v1::Phase phase, int epoch, const TensorDataset& data,
    const std::function<double(const at::Tensor&, const at::Tensor&)>& step_fn) {
  const std::int64_t n = data.size();
  const std::int64_t bs = spec_.batch_size();
  // Seeded by the step count so a resumed run draws the same batches and noise.
  at::manual_seed(spec_.seed() * 1000003 + static_cast<std::uint64_t>(steps_done_));
  at::Tensor perm = at::randperm(n, at::TensorOptions(at::kLong));
  double total = 0;
  std::int64_t batches = 0;
  for (std::int64_t i = 0; i < n; i += bs) {
    if (Cancelled()) return absl::CancelledError("job cancelled");
    at::Tensor idx = perm.slice(0, i, std::min(n, i + bs));
    at::Tensor images = data.images.index_select(0, idx);
    if (augmentation_.crop || augmentation_.flip) images = Augment(images, augmentation_);
    const double loss = step_fn(images, data.labels.index_select(0, idx));
    if (!std::isfinite(loss)) {
      return absl::InternalError(absl::StrCat("training diverged (loss ", loss, ") in ",
                                              v1::Phase_Name(phase), " epoch ", epoch));
    }
    total += loss;
    ++batches;
    ++steps_done_;
  }
  return batches > 0 ? total / batches : 0.0;
}

double Pipeline::Accuracy(QuantModel& model, const TensorDataset& data) {
  torch::NoGradGuard ng;
  model.eval();
  std::int64_t correct = 0;
  const std::int64_t n = data.size();
  for (std::int64_t i = 0; i < n; i += 512) {
    at::Tensor x = data.images.slice(0, i, std::min(n, i + 512));
    at::Tensor y = data.labels.slice(0, i, std::min(n, i + 512));
    correct += model.forward(x).argmax(1).eq(y).sum().item<std::int64_t>();
  }
  model.train();
  return n > 0 ? 100.0 * static_cast<double>(correct) / static_cast<double>(n) : 0.0;
}

std::vector<torch::Tensor> Pipeline::WeightParams(QuantModel& model) {
  std::vector<torch::Tensor> out;
  // The search's own parameters (QSS logits, QPL widths) have optimisers of their own.
  static const std::set<std::string> kSearchParams = {"arch_alpha", "arch_beta", "bits_w", "bits_a"};
  for (const auto& p : model.named_parameters()) {
    const std::string& key = p.key();
    if (kSearchParams.count(key.substr(key.rfind('.') + 1))) continue;
    if (p.value().requires_grad()) out.push_back(p.value());
  }
  return out;
}

std::string Pipeline::CheckpointPath() const {
  if (!options_.checkpoint_path.empty()) return options_.checkpoint_path;
  return options_.out_dir.empty() ? "" : options_.out_dir + "/checkpoint.pt";
}

absl::Status Pipeline::LoadResumePoint() {
  const std::string path = CheckpointPath();
  if (!options_.resume || path.empty() || !std::filesystem::exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(CheckpointData data, ReadCheckpoint(path));
  if (!google::protobuf::util::MessageDifferencer::Equals(data.state.spec(), spec_)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", path, " belongs to a different job spec; delete it or use another output directory"));
  }
  const auto& st = data.state;
  qss_w_.assign(st.qss_weight_specs().begin(), st.qss_weight_specs().end());
  qss_a_.assign(st.qss_activation_specs().begin(), st.qss_activation_specs().end());
  w_chosen_.assign(st.weight_specs().begin(), st.weight_specs().end());
  a_chosen_.assign(st.activation_specs().begin(), st.activation_specs().end());
  result_ = st.result();
  result_.set_resumed(true);
  sequence_ = st.sequence();
  steps_done_ = st.steps_done();
  start_ = Clock::now() - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(st.elapsed_seconds()));
  if (data.groups.count("pretrained")) pretrained_ = data.groups["pretrained"];
  resume_ = std::move(data);
  return absl::OkStatus();
}

int Pipeline::FirstEpoch(v1::Phase phase, int epochs) const {
  if (!resume_) return 0;
  const int here = PhaseOrder(phase), at = PhaseOrder(resume_->state.phase());
  if (here < at) return epochs;
  return here == at ? std::min(epochs, resume_->state.next_epoch()) : 0;
}

bool Pipeline::Finished(v1::Phase phase) const {
  return resume_ && PhaseOrder(phase) < PhaseOrder(resume_->state.phase());
}

absl::Status Pipeline::MaybeRestore(v1::Phase phase, const Optimizers& optimizers) {
  if (!resume_ || restored_ || phase != resume_->state.phase()) return absl::OkStatus();
  restored_ = true;
  RETURN_IF_ERROR(LoadModuleState(*model_, resume_->groups["main"], "searched model"));
  if (baseline_model_) RETURN_IF_ERROR(LoadModuleState(*baseline_model_, resume_->groups["baseline"], "baseline model"));
  for (size_t i = 0; i < optimizers.size(); ++i) {
    auto it = resume_->blobs.find(absl::StrCat("optimizer", i));
    if (it == resume_->blobs.end()) return absl::DataLossError("checkpoint lacks an optimiser state");
    RETURN_IF_ERROR(LoadOptimizer(*optimizers[i], it->second));
  }
  next_unnumbered_ = true;
  Emit(phase, resume_->state.next_epoch(), steps_done_, 0, 0,
       absl::StrFormat("resumed from checkpoint: %s epoch %d", v1::Phase_Name(phase), resume_->state.next_epoch()));
  return absl::OkStatus();
}

absl::Status Pipeline::SaveCheckpoint(v1::Phase phase, int next_epoch, const Optimizers& optimizers) {
  const std::string path = CheckpointPath();
  if (path.empty()) return absl::OkStatus();
  CheckpointData data;
  auto& st = data.state;
  *st.mutable_spec() = spec_;
  st.set_phase(phase);
  st.set_next_epoch(next_epoch);
  st.set_steps_done(steps_done_);
  st.set_sequence(sequence_);
  for (const auto& s : qss_w_) st.add_qss_weight_specs(s);
  for (const auto& s : qss_a_) st.add_qss_activation_specs(s);
  for (const auto& s : w_chosen_) st.add_weight_specs(s);
  for (const auto& s : a_chosen_) st.add_activation_specs(s);
  *st.mutable_result() = result_;
  st.set_elapsed_seconds(Seconds(start_));
  data.groups["main"] = ModuleState(*model_);
  if (!pretrained_.empty()) data.groups["pretrained"] = pretrained_;
  if (baseline_model_) data.groups["baseline"] = ModuleState(*baseline_model_);
  for (size_t i = 0; i < optimizers.size(); ++i) data.blobs[absl::StrCat("optimizer", i)] = SaveOptimizer(*optimizers[i]);
  return WriteCheckpoint(path, data);
}

absl::Status Pipeline::TrainWeights(v1::Phase phase, QuantModel& model, int epochs) {
  torch::optim::Adam opt(WeightParams(model), torch::optim::AdamOptions(spec_.learning_rate()));
  RETURN_IF_ERROR(MaybeRestore(phase, {&opt}));
  model.train();
  // Phases that end in a measured model (fine-tuning, both baselines) decay the learning
  // rate to zero on a cosine: the last epoch's weights are then a settled point, not one
  // noisy step, so float, uniform and mixed accuracies compare like for like.
  // Pre-training keeps the rate, since the search goes on from there.
  const bool anneal = phase != v1::PHASE_PRETRAIN;
  const std::int64_t batches = (data_.train.size() + spec_.batch_size() - 1) / spec_.batch_size();
  const double total_steps = static_cast<double>(std::max<std::int64_t>(1, batches * epochs));
  const int first = FirstEpoch(phase, epochs);
  std::int64_t step = batches * first;
  for (int e = first; e < epochs; ++e) {
    ASSIGN_OR_RETURN(double loss, Epoch(phase, e, data_.train, [&](const at::Tensor& x, const at::Tensor& y) {
      if (anneal) {
        const double lr = spec_.learning_rate() * 0.5 * (1 + std::cos(M_PI * static_cast<double>(step) / total_steps));
        static_cast<torch::optim::AdamOptions&>(opt.param_groups()[0].options()).lr(lr);
      }
      ++step;
      opt.zero_grad();
      at::Tensor l = torch::cross_entropy_loss(model.forward(x), y);
      l.backward();
      opt.step();
      return l.item<double>();
    }));
    Emit(phase, e, steps_done_, loss, Accuracy(model, data_.val), "epoch done", nullptr, /*epoch_end=*/true);
    RETURN_IF_ERROR(SaveCheckpoint(phase, e + 1, {&opt}));
  }
  return absl::OkStatus();
}

v1::Policy Pipeline::CurrentPolicy() {
  v1::Policy p;
  p.set_model(spec_.model());
  *p.mutable_budget() = spec_.budget();
  std::vector<double> wb, ab;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const auto& [name, layer] = layers_[l];
    v1::LayerPolicy* lp = p.add_layers();
    lp->set_name(name);
    lp->set_kind(layer->geometry().kind);
    lp->set_params(layer->geometry().params);
    lp->set_macs(layer->geometry().macs);
    lp->set_activation_elements(layer->geometry().act_elems);
    if (excluded_[l]) {
      lp->set_excluded(true);
      lp->set_note(exclusion_notes_[l]);
      lp->set_weight_bits(32);
      lp->set_activation_bits(32);
      continue;
    }
    std::string ws, as;
    double w = 0, a = 0;
    switch (layer->mode()) {
      case QuantMode::kSearch:
        ws = layer->weight_candidates()[layer->ChosenWeight()];
        as = layer->act_candidates()[layer->ChosenAct()];
        w = quantizers::ParseSpec(ws)->Real("bits");
        a = quantizers::ParseSpec(as)->Real("bits");
        break;
      case QuantMode::kPrecision:
        ws = qss_w_[l];
        as = qss_a_[l];
        w = layer->WeightBits().item<double>();
        a = layer->ActBits().item<double>();
        break;
      case QuantMode::kFixed:
      case QuantMode::kDeployed:
        ws = layer->weight_spec();
        as = layer->act_spec();
        w = quantizers::ParseSpec(ws)->Real("bits");
        a = quantizers::ParseSpec(as)->Real("bits");
        break;
      case QuantMode::kFloat:
        w = a = 32;
        break;
    }
    lp->mutable_weight()->set_spec(ws);
    lp->mutable_activation()->set_spec(as);
    for (auto [spec, proto] : {std::pair{ws, lp->mutable_weight()}, std::pair{as, lp->mutable_activation()}}) {
      auto v = quantizers::ParseSpec(spec);
      if (!v.ok()) continue;
      proto->set_scheme(v->scheme().name);
      for (const auto& param : v->scheme().params) (*proto->mutable_params())[param.key] = v->Text(param.key);
    }
    lp->set_weight_bits(w);
    lp->set_activation_bits(a);
    wb.push_back(w);
    ab.push_back(a);
  }
  for (const UnquantizedLayer& u : unquantized_) {
    v1::LayerPolicy* lp = p.add_layers();
    lp->set_name(u.name);
    lp->set_kind(u.kind);
    lp->set_params(u.params);
    lp->set_excluded(true);
    lp->set_weight_bits(32);
    lp->set_activation_bits(32);
    lp->set_note(u.needs_exclusion ? absl::StrCat(u.kind, " is not quantized by qsearch (conv2d and linear only)")
                                   : u.reason);
  }
  const CostTotals cost = ComputeCost(costs_, wb, ab, spec_.budget().activation_memory_peak());
  *p.mutable_cost() = ToProto(cost);
  *p.mutable_slack() = ToProto(Slack(cost, spec_.budget()));
  for (double m : data_.mean) p.add_input_mean(m);
  for (double s : data_.std) p.add_input_std(s);
  return p;
}

absl::Status Pipeline::SetupQss(std::vector<torch::Tensor>* arch) {
  const auto& q = spec_.qss();
  std::vector<std::string> wc(q.weight_candidates().begin(), q.weight_candidates().end());
  std::vector<std::string> ac(q.activation_candidates().begin(), q.activation_candidates().end());
  at::Tensor shared_alpha, shared_beta;
  if (q.model_wide()) {
    shared_alpha = model_->register_parameter("arch_alpha", at::zeros({static_cast<std::int64_t>(wc.size())}));
    shared_beta = model_->register_parameter("arch_beta", at::zeros({static_cast<std::int64_t>(ac.size())}));
    *arch = {shared_alpha, shared_beta};
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (excluded_[l]) continue;
    auto& layer = layers_[l].second;
    const auto acts = layer->geometry().input_signed ? ForSignedInput(ac) : ac;
    RETURN_IF_ERROR(layer->SetSearch(wc, acts));
    layer->set_gumbel(q.gumbel());
    if (q.model_wide()) {
      if (acts.size() != ac.size()) {
        return absl::InvalidArgumentError(
            "model-wide search needs activation candidates that all support signed inputs");
      }
      layer->ShareLogits(shared_alpha, shared_beta);
    } else {
      arch->push_back(layer->weight_logits());
      arch->push_back(layer->act_logits());
    }
  }
  return absl::OkStatus();
}

absl::Status Pipeline::RunQss() {
  const auto& q = spec_.qss();
  std::vector<torch::Tensor> arch;
  RETURN_IF_ERROR(SetupQss(&arch));
  torch::optim::Adam w_opt(WeightParams(*model_), torch::optim::AdamOptions(spec_.learning_rate()));
  torch::optim::Adam a_opt(arch, torch::optim::AdamOptions(q.arch_lr()));
  RETURN_IF_ERROR(MaybeRestore(v1::PHASE_QSS, {&w_opt, &a_opt}));
  model_->train();
  const std::int64_t bs = spec_.batch_size();
  for (int e = FirstEpoch(v1::PHASE_QSS, q.epochs()); e < q.epochs(); ++e) {
    const double progress = q.epochs() > 1 ? static_cast<double>(e) / (q.epochs() - 1) : 1.0;
    const double tau = q.temperature_start() * std::pow(q.temperature_end() / q.temperature_start(), progress);
    for (auto& [name, layer] : layers_) layer->set_temperature(tau);
    std::int64_t val_cursor = 0;
    ASSIGN_OR_RETURN(double loss, Epoch(v1::PHASE_QSS, e, data_.train, [&](const at::Tensor& x, const at::Tensor& y) {
      w_opt.zero_grad();
      a_opt.zero_grad();
      at::Tensor l = torch::cross_entropy_loss(model_->forward(x), y);
      l.backward();
      w_opt.step();
      if (!q.bilevel()) {
        a_opt.step();
        return l.item<double>();
      }
      // First-order bilevel: the logits follow the loss on a held-out batch.
      const std::int64_t nv = data_.val.size();
      if (val_cursor >= nv) val_cursor = 0;
      at::Tensor vx = data_.val.images.slice(0, val_cursor, std::min(nv, val_cursor + bs));
      at::Tensor vy = data_.val.labels.slice(0, val_cursor, std::min(nv, val_cursor + bs));
      val_cursor += bs;
      w_opt.zero_grad();
      a_opt.zero_grad();
      torch::cross_entropy_loss(model_->forward(vx), vy).backward();
      a_opt.step();
      return l.item<double>();
    }));
    v1::Policy p = CurrentPolicy();
    Emit(v1::PHASE_QSS, e, steps_done_, loss, Accuracy(*model_, data_.val),
         absl::StrFormat("temperature %.3g", tau), &p, /*epoch_end=*/true);
    RETURN_IF_ERROR(SaveCheckpoint(v1::PHASE_QSS, e + 1, {&w_opt, &a_opt}));
  }
  if (Finished(v1::PHASE_QSS)) return absl::OkStatus();  // choices came with the checkpoint
  qss_w_.assign(layers_.size(), "");
  qss_a_.assign(layers_.size(), "");
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (excluded_[l]) continue;
    auto& layer = layers_[l].second;
    qss_w_[l] = layer->weight_candidates()[layer->ChosenWeight()];
    qss_a_[l] = layer->act_candidates()[layer->ChosenAct()];
  }
  return absl::OkStatus();
}

absl::Status Pipeline::SetupQpl(std::vector<torch::Tensor>* bit_params) {
  const auto& q = spec_.qpl();
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (excluded_[l]) continue;
    auto& layer = layers_[l].second;
    const std::vector<int> w_ok = WeightWidths(qss_w_[l], q);
    const std::vector<int> a_ok = ActWidths(qss_a_[l], q);
    if (w_ok.empty() || a_ok.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layers_[l].first,
                                                     ": no usable bit width for its scheme"));
    }
    const double a_lo = a_ok.front(), a_hi = a_ok.back();
    // Start from the width the searched candidate had; the penalty moves it to the budget.
    const double w_init = quantizers::ParseSpec(qss_w_[l])->Real("bits");
    RETURN_IF_ERROR(layer->SetPrecision(qss_w_[l], qss_a_[l], w_ok.front(), w_ok.back(),
                                        std::clamp(w_init, double(w_ok.front()), double(w_ok.back())),
                                        a_lo, a_hi, q.activation_bits(), q.learn_activation_bits()));
    for (const auto& p : layer->named_parameters(/*recurse=*/false)) {
      if (p.key().rfind("bits_", 0) == 0 && p.value().requires_grad()) bit_params->push_back(p.value());
    }
  }
  return absl::OkStatus();
}

absl::Status Pipeline::RunQpl() {
  const auto& q = spec_.qpl();
  const v1::Budget& budget = spec_.budget();
  std::vector<torch::Tensor> bit_params;
  RETURN_IF_ERROR(SetupQpl(&bit_params));
  torch::optim::Adam w_opt(WeightParams(*model_), torch::optim::AdamOptions(spec_.learning_rate()));
  torch::optim::Adam b_opt(bit_params, torch::optim::AdamOptions(q.bits_lr()));
  RETURN_IF_ERROR(MaybeRestore(v1::PHASE_QPL, {&w_opt, &b_opt}));
  const bool hinge = q.penalty() == "hinge";
  auto penalty = [&]() {
    at::Tensor size = at::zeros({}), bitops = at::zeros({}), mem = at::zeros({});
    double params = 0;
    size_t c = 0;
    for (size_t l = 0; l < layers_.size(); ++l) {
      if (excluded_[l]) continue;
      auto& layer = layers_[l].second;
      const LayerCost& lc = costs_[c++];
      at::Tensor wb = layer->WeightBits(), ab = layer->ActBits();
      size = size + static_cast<double>(lc.params) * wb;
      bitops = bitops + static_cast<double>(lc.macs) * wb * ab;
      at::Tensor m = static_cast<double>(lc.act_elems) * ab;
      mem = budget.activation_memory_peak() ? at::maximum(mem, m) : mem + m;
      params += static_cast<double>(lc.params);
    }
    at::Tensor total = at::zeros({});
    auto term = [&](const at::Tensor& cost, double limit) {
      if (limit <= 0) return;
      at::Tensor r = cost / limit - 1;
      total = total + (hinge ? at::relu(r) : r.abs());
    };
    term(size, budget.model_size_bits());
    term(size / params, budget.average_weight_bits());
    term(bitops, budget.bitops());
    term(mem, budget.activation_memory_bits());
    return total;
  };
  model_->train();
  for (int e = FirstEpoch(v1::PHASE_QPL, q.epochs()); e < q.epochs(); ++e) {
    ASSIGN_OR_RETURN(double loss, Epoch(v1::PHASE_QPL, e, data_.train, [&](const at::Tensor& x, const at::Tensor& y) {
      w_opt.zero_grad();
      b_opt.zero_grad();
      at::Tensor l = torch::cross_entropy_loss(model_->forward(x), y) + q.penalty_weight() * penalty();
      l.backward();
      w_opt.step();
      b_opt.step();
      return l.item<double>();
    }));
    v1::Policy p = CurrentPolicy();
    Emit(v1::PHASE_QPL, e, steps_done_, loss, Accuracy(*model_, data_.val),
         absl::StrFormat("average weight bits %.3f", p.cost().average_weight_bits()), &p, /*epoch_end=*/true);
    RETURN_IF_ERROR(SaveCheckpoint(v1::PHASE_QPL, e + 1, {&w_opt, &b_opt}));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Policy> Pipeline::RoundAndRepair() {
  RepairProblem rp;
  rp.layers = costs_;
  rp.budget = spec_.budget();
  std::vector<size_t> index;  // quantized layer -> layers_ index
  std::vector<std::map<int, double>> w_err;
  w_chosen_ = qss_w_;
  a_chosen_ = qss_a_;
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (excluded_[l]) continue;
    index.push_back(l);
    auto& layer = layers_[l].second;
    const std::vector<int> w_ok = WeightWidths(w_chosen_[l], spec_.qpl());
    const std::vector<int> a_ok = ActWidths(a_chosen_[l], spec_.qpl());
    auto nearest = [](const std::vector<int>& ok, double b) {
      int best = ok.front();
      for (int v : ok) if (std::fabs(v - b) < std::fabs(best - b)) best = v;
      return best;
    };
    rp.w_bits.push_back(nearest(w_ok, layer->WeightBits().item<double>()));
    rp.a_bits.push_back(nearest(a_ok, layer->ActBits().item<double>()));
    rp.w_allowed.push_back(w_ok);
    rp.a_allowed.push_back(a_ok);
    // Weight sensitivity: squared quantization error of this layer's weights per width.
    std::map<int, double> errs;
    torch::NoGradGuard ng;
    for (int b : w_ok) {
      auto qz = quantizers::MakeQuantizer(AtBits(w_chosen_[l], b));
      if (!qz.ok()) continue;
      at::Tensor w = layer->weight().detach();
      errs[b] = (w - (*qz)->forward(w)).pow(2).sum().item<double>();
    }
    w_err.push_back(errs);
  }
  rp.w_error = [&](int l, int b) { return w_err[l].count(b) ? w_err[l][b] : 0.0; };
  rp.a_error = [&](int l, int b) {
    return static_cast<double>(costs_[l].act_elems) * std::ldexp(1.0, -2 * b);
  };
  ASSIGN_OR_RETURN(RepairResult r, RepairToBudget(rp));
  for (size_t i = 0; i < index.size(); ++i) {
    const size_t l = index[i];
    w_chosen_[l] = AtBits(w_chosen_[l], r.w_bits[i]);
    a_chosen_[l] = AtBits(a_chosen_[l], r.a_bits[i]);
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (excluded_[l]) continue;
    RETURN_IF_ERROR(layers_[l].second->SetFixed(w_chosen_[l], a_chosen_[l]));
  }
  model_->DropArchitectureParams();
  v1::Policy p = CurrentPolicy();
  Emit(v1::PHASE_QPL, spec_.qpl().epochs(), steps_done_, 0, 0,
       absl::StrFormat("rounded and repaired: %d steps down, %d up", r.lowered, r.raised), &p);
  return p;
}

absl::StatusOr<std::shared_ptr<QuantModel>> Pipeline::PretrainedCopy() {
  ASSIGN_OR_RETURN(auto model, MakeModel(spec_, {data_.channels, data_.height, data_.width, data_.classes}));
  model->Profile(data_.train.images.slice(0, 0, std::min<std::int64_t>(64, data_.train.size())));
  RETURN_IF_ERROR(LoadModuleState(*model, pretrained_, "pre-trained model"));
  if (spec_.fold_batchnorm()) model->FoldBatchNorm();
  return model;
}

int Pipeline::EpochsAfterPretrain() const {
  return spec_.qss().epochs() + spec_.qpl().epochs() + spec_.finetune_epochs();
}

absl::StatusOr<double> Pipeline::FloatBaseline() {
  ASSIGN_OR_RETURN(baseline_model_, PretrainedCopy());
  RETURN_IF_ERROR(TrainWeights(v1::PHASE_FLOAT_BASELINE, *baseline_model_, EpochsAfterPretrain()));
  const double acc = Accuracy(*baseline_model_, data_.test);
  baseline_model_.reset();
  return acc;
}

absl::StatusOr<double> Pipeline::UniformBaseline(double* bits_out) {
  // Largest uniform weight width whose policy fits the budget, activations as the search.
  const double act_bits = spec_.qpl().activation_bits();
  int chosen = 0;
  for (int b = 8; b >= 2; --b) {
    std::vector<double> wb(costs_.size(), b), ab(costs_.size(), act_bits);
    if (WithinBudget(ComputeCost(costs_, wb, ab, spec_.budget().activation_memory_peak()), spec_.budget())) {
      chosen = b;
      break;
    }
  }
  if (chosen == 0) return absl::FailedPreconditionError("no uniform width of 2..8 bits fits the budget");
  *bits_out = chosen;
  ASSIGN_OR_RETURN(baseline_model_, PretrainedCopy());
  auto layers = baseline_model_->QuantLayers();
  for (size_t l = 0; l < layers.size(); ++l) {
    if (excluded_[l]) continue;
    const std::string act = layers[l].second->geometry().input_signed
                                ? absl::StrCat("uniform_act:bits=", act_bits, ",signed=true")
                                : absl::StrCat("uniform_act:bits=", act_bits);
    RETURN_IF_ERROR(layers[l].second->SetFixed(
        absl::StrCat("uniform:bits=", chosen, ",granularity=channel"), act));
  }
  RETURN_IF_ERROR(TrainWeights(v1::PHASE_BASELINE, *baseline_model_, EpochsAfterPretrain()));
  const double acc = Accuracy(*baseline_model_, data_.test);
  baseline_model_.reset();
  return acc;
}

absl::Status Pipeline::Export(const v1::JobResult& result) {
  if (options_.out_dir.empty()) return absl::OkStatus();
  auto write = [&](const std::string& name, const std::string& text) -> absl::Status {
    std::ofstream out(options_.out_dir + "/" + name);
    out << text;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", options_.out_dir, "/", name));
    return absl::OkStatus();
  };
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(result.policy(), &json, opts).ok()) {
    return absl::InternalError("policy does not convert to JSON");
  }
  RETURN_IF_ERROR(write("policy.json", json));
  json.clear();
  if (!google::protobuf::util::MessageToJsonString(result, &json, opts).ok()) {
    return absl::InternalError("result does not convert to JSON");
  }
  RETURN_IF_ERROR(write("result.json", json));
  // NNI config_list: one entry per quantized layer.
  std::vector<std::string> entries;
  for (const auto& l : result.policy().layers()) {
    if (l.excluded()) continue;
    entries.push_back(absl::StrFormat(
        "  {\"op_names\": [\"%s\"], \"quant_types\": [\"weight\", \"input\"], "
        "\"quant_bits\": {\"weight\": %d, \"input\": %d}}",
        l.name(), static_cast<int>(l.weight_bits()), static_cast<int>(l.activation_bits())));
  }
  RETURN_IF_ERROR(write("config_list.json", absl::StrCat("[\n", absl::StrJoin(entries, ",\n"), "\n]\n")));
  RETURN_IF_ERROR(WriteQuantizedCheckpoint(options_.out_dir + "/quantized.pt", *model_, result.policy()));
  if (!spec_.model_path().empty()) {
    RETURN_IF_ERROR(ExportTorchScript(*model_, options_.out_dir + "/quantized_model.pt", data_.mean, data_.std));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::JobResult> Pipeline::Run() {
  at::manual_seed(spec_.seed());
  if (spec_.threads() > 0) at::set_num_threads(spec_.threads());
  auto phase_start = Clock::now();
  auto lap = [&](const char* phase) {
    (*result_.mutable_phase_seconds())[phase] += Seconds(phase_start);
    phase_start = Clock::now();
  };

  RETURN_IF_ERROR(LoadResumePoint());
  next_unnumbered_ = resume_.has_value();
  Emit(v1::PHASE_LOADING, 0, steps_done_, 0, 0, "loading data and model");
  ASSIGN_OR_RETURN(data_, LoadData(spec_.dataset()));
  ASSIGN_OR_RETURN(model_, MakeModel(spec_, {data_.channels, data_.height, data_.width, data_.classes}));
  model_->Profile(data_.train.images.slice(0, 0, std::min<std::int64_t>(64, data_.train.size())));
  layers_ = model_->QuantLayers();
  unquantized_ = model_->UnquantizedLayers();
  RETURN_IF_ERROR(SelectLayers(spec_, layers_, unquantized_, &excluded_, &exclusion_notes_, &costs_));
  RETURN_IF_ERROR(CheckFeasible(spec_, costs_));
  augmentation_ = AugmentationFor(spec_.dataset(), data_);
  if (!resume_) {
    result_.mutable_class_names()->Assign(data_.class_names.begin(), data_.class_names.end());
    // Said once: a resumed job has its warnings in the checkpointed result.
    for (const std::string& w : model_->Warnings()) Warn(w);
  }
  const std::int64_t batches = (data_.train.size() + spec_.batch_size() - 1) / spec_.batch_size();
  const int baselines = (spec_.uniform_baseline() ? 1 : 0) + (spec_.float_baseline() ? 1 : 0);
  steps_total_ = std::max<std::int64_t>(
      1, batches * (spec_.pretrain_epochs() + EpochsAfterPretrain() * (1 + baselines)));
  if (!resume_) lap("loading");

  if (!Finished(v1::PHASE_PRETRAIN)) {
    RETURN_IF_ERROR(TrainWeights(v1::PHASE_PRETRAIN, *model_, spec_.pretrain_epochs()));
    result_.set_float_accuracy(Accuracy(*model_, data_.test));
    for (const auto& [name, t] : ModuleState(*model_)) pretrained_[name] = t.clone();
    lap("pretrain");
  }
  if (spec_.fold_batchnorm()) {
    const int folded = model_->FoldBatchNorm();
    if (!Finished(v1::PHASE_PRETRAIN)) Emit(v1::PHASE_PRETRAIN, 0, steps_done_, 0, 0, absl::StrCat("folded ", folded, " batch norms"));
  }

  RETURN_IF_ERROR(RunQss());
  if (!Finished(v1::PHASE_QSS)) lap("qss");
  RETURN_IF_ERROR(RunQpl());
  if (Finished(v1::PHASE_QPL)) {
    for (size_t l = 0; l < layers_.size(); ++l) {
      if (!excluded_[l]) RETURN_IF_ERROR(layers_[l].second->SetFixed(w_chosen_[l], a_chosen_[l]));
    }
    model_->DropArchitectureParams();
  } else {
    RETURN_IF_ERROR(RoundAndRepair().status());
    lap("qpl");
  }
  RETURN_IF_ERROR(TrainWeights(v1::PHASE_FINETUNE, *model_, spec_.finetune_epochs()));
  if (!Finished(v1::PHASE_FINETUNE)) lap("finetune");

  v1::Policy policy = CurrentPolicy();
  if (!Finished(v1::PHASE_EVALUATE)) result_.set_quantized_accuracy(Accuracy(*model_, data_.test));
  policy.set_float_accuracy(result_.float_accuracy());
  policy.set_quantized_accuracy(result_.quantized_accuracy());
  *result_.mutable_policy() = policy;
  if (!Finished(v1::PHASE_EVALUATE)) {
    Emit(v1::PHASE_EVALUATE, 0, steps_done_, 0, result_.quantized_accuracy(),
         absl::StrFormat("float %.2f%%, quantized %.2f%%", result_.float_accuracy(), result_.quantized_accuracy()),
         &policy);
    lap("evaluate");
  }

  if (spec_.float_baseline() && !Finished(v1::PHASE_FLOAT_BASELINE)) {
    ASSIGN_OR_RETURN(double acc, FloatBaseline());
    result_.set_float_baseline_accuracy(acc);
    Emit(v1::PHASE_FLOAT_BASELINE, 0, steps_done_, 0, acc,
         absl::StrFormat("float on the same schedule: %.2f%%", acc));
    lap("float_baseline");
  }
  if (spec_.uniform_baseline() && !Finished(v1::PHASE_BASELINE)) {
    double bits = 0;
    ASSIGN_OR_RETURN(double acc, UniformBaseline(&bits));
    result_.set_uniform_accuracy(acc);
    result_.set_uniform_weight_bits(bits);
    Emit(v1::PHASE_BASELINE, 0, steps_done_, 0, acc, absl::StrFormat("uniform %g-bit: %.2f%%", bits, acc));
    lap("baseline");
  }
  if (resume_ && !restored_) {
    // The checkpoint's phase did not run again (e.g. a baseline the spec no longer asks
    // for cannot happen: specs must match), so load the searched model for the export.
    RETURN_IF_ERROR(LoadModuleState(*model_, resume_->groups["main"], "searched model"));
  }
  RETURN_IF_ERROR(Export(result_));
  Emit(v1::PHASE_DONE, 0, steps_done_, 0, result_.quantized_accuracy(), "done", &policy);
  if (const std::string ckpt = CheckpointPath(); !ckpt.empty()) std::filesystem::remove(ckpt);
  return result_;
}

}  // namespace

std::vector<std::string> DefaultWeightCandidates(int bits) {
  std::vector<std::string> out;
  for (const char* spec : {"uniform:bits=4,granularity=channel", "esb:bits=4,k=1,granularity=channel",
                           "pot:bits=4,granularity=channel", "ul2q:bits=4,granularity=channel"}) {
    if (std::string s = AtBits(spec, bits); !s.empty()) out.push_back(s);
  }
  return out;
}
std::vector<std::string> DefaultActivationCandidates(int bits) {
  std::vector<std::string> out;
  for (const char* spec : {"uniform_act:bits=4", "pact:bits=4", "lsq_act:bits=4"}) {
    if (std::string s = AtBits(spec, bits); !s.empty()) out.push_back(s);
  }
  return out;
}

v1::JobSpec WithDefaults(v1::JobSpec s) {
  if (s.model().empty()) s.set_model(s.model_path().empty() ? "lenet5" : "torchscript");
  if (s.batch_size() <= 0) s.set_batch_size(128);
  if (auto* d = s.mutable_dataset(); d->augment().empty()) d->set_augment(d->kind() == "image_folder" ? "crop_flip" : "none");
  if (s.learning_rate() <= 0) s.set_learning_rate(1e-3);
  auto* p = s.mutable_qpl();
  if (p->min_bits() <= 0) p->set_min_bits(2);
  if (p->max_bits() <= 0) p->set_max_bits(8);
  if (p->penalty_weight() <= 0) p->set_penalty_weight(1.0);
  if (p->penalty().empty()) p->set_penalty("l1");
  if (p->activation_bits() <= 0) p->set_activation_bits(8);
  if (p->bits_lr() <= 0) p->set_bits_lr(0.05);
  // Default candidates compare schemes at the width the policy will mostly use: the
  // average-bits target when there is one (a scheme that wins at 4 bits may lose at 3),
  // else 4; activations at the width QPL keeps them at.
  auto* q = s.mutable_qss();
  const double avg = s.budget().average_weight_bits();
  const int w_bits = avg > 0 ? static_cast<int>(std::clamp(std::lround(avg), 2L, 8L)) : 4;
  const int a_bits = static_cast<int>(std::clamp(std::lround(p->activation_bits()), 2L, 8L));
  if (q->weight_candidates().empty()) for (auto& c : DefaultWeightCandidates(w_bits)) q->add_weight_candidates(c);
  if (q->activation_candidates().empty()) for (auto& c : DefaultActivationCandidates(a_bits)) q->add_activation_candidates(c);
  if (q->arch_lr() <= 0) q->set_arch_lr(3e-3);
  if (q->temperature_start() <= 0) q->set_temperature_start(1.0);
  if (q->temperature_end() <= 0) q->set_temperature_end(0.2);
  return s;
}

absl::Status ValidateSpec(const v1::JobSpec& raw) {
  const v1::JobSpec s = WithDefaults(raw);
  const auto zoo = ZooModels();
  if (s.model_path().empty() && std::find(zoo.begin(), zoo.end(), s.model()) == zoo.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown model '", s.model(), "'; the zoo has ",
                                                   absl::StrJoin(zoo, ", ")));
  }
  RETURN_IF_ERROR(ValidateBudget(s.budget()));
  for (const auto& c : s.qss().weight_candidates()) {
    auto q = quantizers::MakeQuantizer(c);
    if (!q.ok()) return absl::InvalidArgumentError(absl::StrCat("qss.weight_candidates: ", q.status().message()));
    if ((*q)->role() != quantizers::Role::kWeight) {
      return absl::InvalidArgumentError(absl::StrCat("qss.weight_candidates: '", c, "' is an activation scheme"));
    }
  }
  for (const auto& c : s.qss().activation_candidates()) {
    auto q = quantizers::MakeQuantizer(c);
    if (!q.ok()) return absl::InvalidArgumentError(absl::StrCat("qss.activation_candidates: ", q.status().message()));
    if ((*q)->role() != quantizers::Role::kActivation) {
      return absl::InvalidArgumentError(absl::StrCat("qss.activation_candidates: '", c, "' is a weight scheme"));
    }
  }
  for (const auto& t : s.op_types()) {
    const std::string lower = absl::AsciiStrToLower(t);
    if (lower != "conv2d" && lower != "linear") {
      return absl::InvalidArgumentError(absl::StrCat("op_types: unknown op type '", t, "'; use conv2d or linear"));
    }
  }
  const auto& d = s.dataset();
  static const std::set<std::string> kAugment = {"crop_flip", "crop", "flip", "none"};
  if (!kAugment.count(d.augment())) {
    return absl::InvalidArgumentError(absl::StrCat("dataset.augment must be crop_flip, crop, flip or none, got '",
                                                   d.augment(), "'"));
  }
  if (d.mean_size() != d.std_size() || d.mean_size() > 16) {
    return absl::InvalidArgumentError("dataset.mean and dataset.std need the same number of values (1 per channel, or "
                                      "1 for all; at most 16)");
  }
  for (int c = 0; c < d.mean_size(); ++c) {
    if (!std::isfinite(d.mean(c)) || !std::isfinite(d.std(c)) || d.std(c) <= 0) {
      return absl::InvalidArgumentError("dataset.mean must be finite and dataset.std finite and > 0");
    }
  }
  if (d.height() < 0 || d.height() > 4096 || d.width() < 0 || d.width() > 4096) {
    return absl::InvalidArgumentError("dataset.height and dataset.width must be in 0..4096 (0: the first image's)");
  }
  if (d.channels() != 0 && d.channels() != 1 && d.channels() != 3) {
    return absl::InvalidArgumentError("dataset.channels must be 1 (grey), 3 (RGB) or 0 (the first image's)");
  }
  const auto& p = s.qpl();
  if (p.min_bits() < 1 || p.max_bits() > 8 || p.min_bits() > p.max_bits()) {
    return absl::InvalidArgumentError("qpl bit range must satisfy 1 <= min_bits <= max_bits <= 8");
  }
  if (p.penalty() != "l1" && p.penalty() != "hinge") {
    return absl::InvalidArgumentError(absl::StrCat("qpl.penalty must be l1 or hinge, got '", p.penalty(), "'"));
  }
  if (p.activation_bits() < 1 || p.activation_bits() > 8 || p.activation_bits() != std::floor(p.activation_bits())) {
    return absl::InvalidArgumentError("qpl.activation_bits must be an integer in 1..8");
  }
  for (int e : {s.pretrain_epochs(), s.qss().epochs(), s.qpl().epochs(), s.finetune_epochs()}) {
    if (e < 0 || e > 1000) return absl::InvalidArgumentError("epoch counts must be in 0..1000");
  }
  if (s.batch_size() > 65536) return absl::InvalidArgumentError("batch_size must be <= 65536");
  return absl::OkStatus();
}

namespace {

// A model profiled at the data set's input shape, with its quantizable layers.
struct ProfiledModel {
  std::shared_ptr<QuantModel> model;
  LayerList layers;
};

ProfiledModel Profiled(std::shared_ptr<QuantModel> model, const ModelShape& shape) {
  model->Profile(at::zeros({1, shape.channels, shape.height, shape.width}));
  LayerList layers = model->QuantLayers();
  return {std::move(model), std::move(layers)};
}

// Zoo models' layer tables, built and profiled once per (model, input shape): a zoo
// architecture's layers, sizes and MACs depend on nothing else, and building one is most
// of what checking a spec costs. Entries are only read after insertion (geometry()), so
// concurrent checks share them; at most zoo size x data set shapes entries.
absl::StatusOr<std::shared_ptr<const ProfiledModel>> ZooLayerTable(const std::string& name, const ModelShape& shape) {
  static absl::Mutex mu(absl::kConstInit);
  static auto* cache = new std::map<std::string, std::shared_ptr<const ProfiledModel>>();
  const std::string key = absl::StrCat(name, "/", shape.channels, "x", shape.height, "x", shape.width, "/", shape.classes);
  {
    absl::MutexLock lock(&mu);
    if (auto it = cache->find(key); it != cache->end()) return it->second;
  }
  ASSIGN_OR_RETURN(auto model, BuildModel(name, shape));
  auto entry = std::make_shared<const ProfiledModel>(Profiled(std::move(model), shape));
  absl::MutexLock lock(&mu);
  return cache->emplace(key, std::move(entry)).first->second;  // a racing first check may have won
}

}  // namespace

absl::Status PrecheckSpec(const v1::JobSpec& raw) {
  RETURN_IF_ERROR(ValidateSpec(raw));
  const v1::JobSpec spec = WithDefaults(raw);
  ModelShape shape;
  const std::string& kind = spec.dataset().kind();
  if (kind == "fashion_mnist" || kind == "mnist" || kind.empty()) {
    shape = {1, 28, 28, 10};
  } else if (kind == "cifar10") {
    shape = {3, 32, 32, 10};
  } else {
    return absl::OkStatus();  // the shape is known once the archive is read
  }
  return CatchTorch("checking the spec", [&]() -> absl::Status {
    std::shared_ptr<const ProfiledModel> table;
    if (spec.model_path().empty()) {
      ASSIGN_OR_RETURN(table, ZooLayerTable(spec.model(), shape));
    } else {
      // A user's file: read it every time (a path may be rewritten between jobs).
      ASSIGN_OR_RETURN(auto model, MakeModel(spec, shape));
      table = std::make_shared<const ProfiledModel>(Profiled(std::move(model), shape));
    }
    std::vector<bool> excluded;
    std::vector<std::string> notes;
    std::vector<LayerCost> costs;
    RETURN_IF_ERROR(SelectLayers(spec, table->layers, table->model->UnquantizedLayers(), &excluded, &notes, &costs));
    return CheckFeasible(spec, costs);
  });
}

absl::StatusOr<v1::JobResult> RunSearchJob(const v1::JobSpec& raw, const JobOptions& options) {
  RETURN_IF_ERROR(ValidateSpec(raw));
  const v1::JobSpec spec = WithDefaults(raw);
  Pipeline pipeline(spec, options);
  return CatchTorch("search job", [&] { return pipeline.Run(); });
}

}  // namespace qsearch::search
