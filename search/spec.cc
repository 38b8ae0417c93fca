// Spec defaults and validation.
#include "search/spec.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "quantizers/quantizer.h"
#include "search/bit_widths.h"
#include "search/cost.h"
#include "search/script_model.h"

namespace qsearch::search {

absl::Status CheckTrainingVolume(const v1::JobSpec& s, std::int64_t train_images) {
  const int after = s.qss().epochs() + s.qpl().epochs() + s.finetune_epochs();
  const int runs = 1 + s.baselines_size();  // (a spec with defaults: the old switches are folded in)
  const double images = static_cast<double>(train_images) * (s.pretrain_epochs() + static_cast<double>(after) * runs);
  if (images > kMaxTrainingImages) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the job would train on %.3g images (%d training images x its epochs and baselines); at most %.3g are "
        "accepted: use fewer epochs or a train_size",
        images, train_images, kMaxTrainingImages));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<QuantModel>> MakeModel(const v1::JobSpec& spec, const ModelShape& shape) {
  if (!spec.model_path().empty()) return LoadScriptModel(spec.model_path(), shape);
  return BuildModel(spec.model(), shape);
}

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
  // Zoo models start from random weights; a user's model is usually trained already.
  if (!s.has_pretrain_epochs()) s.set_pretrain_epochs(s.model_path().empty() ? 1 : 0);
  if (!s.has_finetune_epochs()) s.set_finetune_epochs(1);
  if (s.search_mode().empty()) s.set_search_mode("dnas");
  // The sensitivity mode searches without QSS or QPL epochs. The DNAS default is QSS, then
  // the exact allocation of bit widths over the chosen schemes, without QPL epochs: in
  // docs/benchmarks.md (issue 14) that is never below the best baseline, while QSS + QPL
  // lost to it on resnet20 at every budget. QPL runs when a spec asks for its epochs.
  if (!s.qss().has_epochs()) s.mutable_qss()->set_epochs(s.search_mode() == "sensitivity" ? 0 : 1);
  if (!s.qpl().has_epochs()) s.mutable_qpl()->set_epochs(0);
  if (s.qss().arch_every() == 0) s.mutable_qss()->set_arch_every(1);
  if (s.qpl().init().empty()) s.mutable_qpl()->set_init(s.qpl().epochs() == 0 ? "sensitivity" : "candidate");
  // The old switches are baselines like the others; the list runs in a fixed order.
  std::set<std::string> baselines(s.baselines().begin(), s.baselines().end());
  if (s.float_baseline()) baselines.insert("float");
  if (s.uniform_baseline()) baselines.insert("uniform");
  s.clear_float_baseline();
  s.clear_uniform_baseline();
  s.clear_baselines();
  for (const char* name : kBaselineOrder) {
    if (baselines.erase(name) > 0) s.add_baselines(name);
  }
  for (const std::string& unknown : baselines) s.add_baselines(unknown);  // ValidateSpec names it
  if (auto* d = s.mutable_dataset(); d->kind().empty()) {
    d->set_kind(absl::StartsWith(d->path(), "sha256:") ? "archive" : "fashion_mnist");
  }
  if (const v1::Budget& b = s.budget(); b.model_size_bits() == 0 && b.average_weight_bits() == 0 && b.bitops() == 0 &&
                                        b.activation_memory_bits() == 0) {
    s.mutable_budget()->set_average_weight_bits(4);
  }
  if (s.batch_size() == 0) s.set_batch_size(128);
  if (s.world_size() == 0) s.set_world_size(1);
  if (auto* d = s.mutable_dataset(); d->augment().empty()) d->set_augment(d->kind() == "image_folder" ? "crop_flip" : "none");
  if (s.learning_rate() == 0) s.set_learning_rate(1e-3);
  auto* p = s.mutable_qpl();
  // Under an average below 3 bits, widths go down to 1 bit where the chosen scheme has a
  // 1-bit form (ul2q, vecq, dorefa, residual, binary, asymmetric uniform): at 2 bits the
  // allocation can then mix 1- and 3-bit layers instead of giving every layer 2, which
  // measured +1.0 / +2.0 points on resnet20 / mobilenetv2_tiny. At 3 bits the floor of 1
  // measured no better (docs/benchmarks.md, "1-bit layers"), so it stays 2 there.
  // Measured for the DNAS pipeline with fixed activation widths only: the sensitivity
  // mode keeps 2, and so do learned activation widths, which share this floor (a 1-bit
  // unsigned activation keeps zero and one level).
  if (p->min_bits() == 0) {
    const double avg_bits = s.budget().average_weight_bits();
    const bool one_bit = s.search_mode() == "dnas" && !p->learn_activation_bits() && avg_bits > 0 && avg_bits < 3;
    p->set_min_bits(one_bit ? 1 : 2);
  }
  if (p->max_bits() == 0) p->set_max_bits(8);
  if (p->penalty_weight() == 0) p->set_penalty_weight(1.0);
  if (p->penalty().empty()) p->set_penalty("l1");
  if (p->activation_bits() == 0) p->set_activation_bits(8);
  if (p->bits_lr() == 0) p->set_bits_lr(0.05);
  // Default candidates compare schemes at the width the policy will mostly use: the
  // average-bits target when there is one (a scheme that wins at 4 bits may lose at 3),
  // else 4; activations at the width QPL keeps them at.
  auto* q = s.mutable_qss();
  const double avg = s.budget().average_weight_bits();
  // (Guarded: the spec is not validated yet, and lround of NaN or inf is undefined.)
  const int w_bits = avg > 0 && avg < 64 ? static_cast<int>(std::clamp(std::lround(avg), 2L, 8L)) : 4;
  const double act = p->activation_bits();
  const int a_bits = act > 0 && act < 64 ? static_cast<int>(std::clamp(std::lround(act), 2L, 8L)) : 8;
  if (q->weight_candidates().empty()) for (auto& c : DefaultWeightCandidates(w_bits)) q->add_weight_candidates(c);
  if (q->activation_candidates().empty()) for (auto& c : DefaultActivationCandidates(a_bits)) q->add_activation_candidates(c);
  if (q->arch_lr() == 0) q->set_arch_lr(3e-3);
  if (q->temperature_start() == 0) q->set_temperature_start(1.0);
  if (q->temperature_end() == 0) q->set_temperature_end(0.2);
  return s;
}

namespace {

// The limits a spec's lists and numbers must keep: an accepted spec can neither hang a
// worker nor make a record no default client can read.
constexpr int kMaxCandidates = 16;
constexpr int kMaxNames = 4096;
constexpr size_t kMaxNameLength = 512;
constexpr std::int64_t kMaxImages = 1'000'000'000;

absl::Status Finite(double v, const char* field, double lo, double hi, bool lo_open = false) {
  if (!std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo)) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be a number in ", lo_open ? "(" : "[", lo, ", ", hi,
                                                   "], got ", v));
  }
  return absl::OkStatus();
}

absl::Status Names(const google::protobuf::RepeatedPtrField<std::string>& names, const char* field) {
  if (names.size() > kMaxNames) {
    return absl::InvalidArgumentError(absl::StrCat(field, " lists ", names.size(), " names; at most ", kMaxNames));
  }
  for (const auto& n : names) {
    if (n.empty() || n.size() > kMaxNameLength) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": names must be 1..", kMaxNameLength, " characters"));
    }
  }
  return absl::OkStatus();
}

// Numbers and sizes, each against its documented range.
absl::Status ValidateNumbers(const v1::JobSpec& s) {
  RETURN_IF_ERROR(Finite(s.learning_rate(), "learning_rate", 0, 10, /*lo_open=*/true));
  if (s.batch_size() < 1 || s.batch_size() > 65536) return absl::InvalidArgumentError("batch_size must be in 1..65536");
  if (s.world_size() < 1 || s.world_size() > kMaxWorldSize) {
    return absl::InvalidArgumentError(absl::StrCat("world_size must be in 1..", kMaxWorldSize));
  }
  if (s.world_size() > s.batch_size()) {
    return absl::InvalidArgumentError("world_size must not exceed batch_size: every process needs images of each batch");
  }
  const auto& q = s.qss();
  RETURN_IF_ERROR(Finite(q.arch_lr(), "qss.arch_lr", 0, 10, true));
  RETURN_IF_ERROR(Finite(q.temperature_start(), "qss.temperature_start", 0, 1e6, true));
  RETURN_IF_ERROR(Finite(q.temperature_end(), "qss.temperature_end", 0, 1e6, true));
  if (q.weight_candidates_size() > kMaxCandidates || q.activation_candidates_size() > kMaxCandidates) {
    return absl::InvalidArgumentError(absl::StrCat("qss: at most ", kMaxCandidates, " candidates of each kind"));
  }
  const auto& p = s.qpl();
  RETURN_IF_ERROR(Finite(p.min_bits(), "qpl.min_bits", 1, 8));
  RETURN_IF_ERROR(Finite(p.max_bits(), "qpl.max_bits", 1, 8));
  RETURN_IF_ERROR(Finite(p.penalty_weight(), "qpl.penalty_weight", 0, 1e6));
  RETURN_IF_ERROR(Finite(p.bits_lr(), "qpl.bits_lr", 0, 100, true));
  RETURN_IF_ERROR(Finite(p.activation_bits(), "qpl.activation_bits", 1, 8));
  const auto& d = s.dataset();
  for (std::int64_t n : {d.train_size(), d.val_size(), d.test_size()}) {
    if (n < 0 || n > kMaxImages) {
      return absl::InvalidArgumentError(absl::StrCat("dataset train/val/test sizes must be in 0..", kMaxImages,
                                                     " (0: the default)"));
    }
  }
  if (d.classes() < 0 || d.classes() > 65536) return absl::InvalidArgumentError("dataset.classes must be in 0..65536");
  if (s.time_limit_seconds() < 0) return absl::InvalidArgumentError("time_limit_seconds must not be negative");
  RETURN_IF_ERROR(Names(s.op_types(), "op_types"));
  RETURN_IF_ERROR(Names(s.op_names(), "op_names"));
  RETURN_IF_ERROR(Names(s.exclude_op_names(), "exclude_op_names"));
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSpec(const v1::JobSpec& s) {
  RETURN_IF_ERROR(ValidateNumbers(s));
  if (s.search_mode() != "dnas" && s.search_mode() != "sensitivity") {
    return absl::InvalidArgumentError(absl::StrCat("search_mode must be dnas or sensitivity, got '", s.search_mode(), "'"));
  }
  if (s.search_mode() == "sensitivity" && (s.qss().epochs() > 0 || s.qpl().epochs() > 0)) {
    return absl::InvalidArgumentError("search_mode sensitivity runs no QSS or QPL epochs: leave qss.epochs and "
                                      "qpl.epochs unset or 0");
  }
  for (const auto& b : s.baselines()) {
    if (std::find(std::begin(kBaselineOrder), std::end(kBaselineOrder), b) == std::end(kBaselineOrder)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown baseline '", b,
                                                     "'; use float, uniform, uniform_first_last_8 or sensitivity"));
    }
  }
  if (s.qpl().init() != "candidate" && s.qpl().init() != "sensitivity") {
    return absl::InvalidArgumentError(absl::StrCat("qpl.init must be candidate or sensitivity, got '", s.qpl().init(), "'"));
  }
  if (s.qss().arch_every() < 1 || s.qss().arch_every() > 1000) {
    return absl::InvalidArgumentError("qss.arch_every must be in 1..1000");
  }
  static const std::set<std::string> kKinds = {"fashion_mnist", "mnist", "cifar10", "archive", "image_folder"};
  const std::string& kind = s.dataset().kind();
  if (!kKinds.count(kind)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dataset kind '", kind,
                                                   "'; use fashion_mnist, mnist, cifar10, archive or image_folder"));
  }
  if (kind != "fashion_mnist" && kind != "mnist" && s.dataset().path().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("dataset kind ", kind, " needs dataset.path"));
  }
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
  RETURN_IF_ERROR(CheckTrainingVolume(s, s.dataset().train_size()));
  return absl::OkStatus();
}

}  // namespace qsearch::search
