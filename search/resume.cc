// Checkpoint state: what is saved after every epoch and how a resumed job finds its place.
#include "search/resume.h"

#include <filesystem>

#include <google/protobuf/util/message_differencer.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace qsearch::search {

std::string CheckpointPath(const JobOptions& options) {
  if (!options.checkpoint_path.empty()) return options.checkpoint_path;
  return options.out_dir.empty() ? "" : options.out_dir + "/checkpoint.pt";
}

int PhaseOrder(v1::Phase p) {
  static constexpr v1::Phase kOrder[] = {
      v1::PHASE_LOADING,  v1::PHASE_PRETRAIN, v1::PHASE_ALLOCATE, v1::PHASE_QSS,
      v1::PHASE_QPL,      v1::PHASE_FINETUNE, v1::PHASE_EVALUATE, v1::PHASE_FLOAT_BASELINE,
      v1::PHASE_BASELINE, v1::PHASE_BASELINE_FIRST_LAST_8, v1::PHASE_BASELINE_SENSITIVITY,
      v1::PHASE_EXPORT,   v1::PHASE_DONE};
  for (size_t i = 0; i < std::size(kOrder); ++i) {
    if (kOrder[i] == p) return static_cast<int>(i);
  }
  return -1;
}

absl::Status LoadResumePoint(JobContext& job) {
  const std::string path = CheckpointPath(job.options);
  std::error_code ec;
  if (!job.options.resume || path.empty() || !std::filesystem::exists(path, ec)) return absl::OkStatus();
  ASSIGN_OR_RETURN(CheckpointData data, ReadCheckpoint(path));
  if (!google::protobuf::util::MessageDifferencer::Equals(data.state.spec(), job.spec)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", path, " belongs to a different job spec; delete it or use another output directory"));
  }
  const auto& st = data.state;
  job.qss_w.assign(st.qss_weight_specs().begin(), st.qss_weight_specs().end());
  job.qss_a.assign(st.qss_activation_specs().begin(), st.qss_activation_specs().end());
  job.w_chosen.assign(st.weight_specs().begin(), st.weight_specs().end());
  job.a_chosen.assign(st.activation_specs().begin(), st.activation_specs().end());
  job.sensitivity.assign(st.sensitivity().begin(), st.sensitivity().end());
  job.result = st.result();
  job.result.set_resumed(true);
  job.progress.sequence = st.sequence();
  job.progress.steps_done = st.steps_done();
  job.progress.SetElapsedSeconds(st.elapsed_seconds());
  if (data.groups.count("pretrained")) job.pretrained = data.groups["pretrained"];
  job.resume = std::move(data);
  return absl::OkStatus();
}

int FirstEpoch(const JobContext& job, v1::Phase phase, int epochs) {
  if (!job.resume) return 0;
  const int here = PhaseOrder(phase), at = PhaseOrder(job.resume->state.phase());
  if (here < at) return epochs;
  return here == at ? std::min(epochs, job.resume->state.next_epoch()) : 0;
}

bool Finished(const JobContext& job, v1::Phase phase) {
  return job.resume && PhaseOrder(phase) < PhaseOrder(job.resume->state.phase());
}

absl::Status MaybeRestore(JobContext& job, v1::Phase phase, const Optimizers& optimizers) {
  if (!job.resume || job.restored || phase != job.resume->state.phase()) return absl::OkStatus();
  job.restored = true;
  RETURN_IF_ERROR(LoadModuleState(*job.model, job.resume->groups["main"], "searched model"));
  if (job.baseline_model) {
    RETURN_IF_ERROR(LoadModuleState(*job.baseline_model, job.resume->groups["baseline"], "baseline model"));
  }
  for (size_t i = 0; i < optimizers.size(); ++i) {
    auto it = job.resume->blobs.find(absl::StrCat("optimizer", i));
    if (it == job.resume->blobs.end()) return absl::DataLossError("checkpoint lacks an optimiser state");
    RETURN_IF_ERROR(LoadOptimizer(*optimizers[i], it->second));
  }
  job.progress.Unnumbered();
  const int epoch = job.resume->state.next_epoch();
  job.progress.Emit({phase, epoch, 0, 0,
                     absl::StrFormat("resumed from checkpoint: %s epoch %d", v1::Phase_Name(phase), epoch)});
  return absl::OkStatus();
}

absl::Status SaveCheckpoint(JobContext& job, v1::Phase phase, int next_epoch, const Optimizers& optimizers) {
  const std::string path = CheckpointPath(job.options);
  if (path.empty() || job.options.rank > 0) return absl::OkStatus();
  CheckpointData data;
  auto& st = data.state;
  *st.mutable_spec() = job.spec;
  st.set_phase(phase);
  st.set_next_epoch(next_epoch);
  st.set_steps_done(job.progress.steps_done);
  st.set_sequence(job.progress.sequence);
  for (const auto& s : job.qss_w) st.add_qss_weight_specs(s);
  for (const auto& s : job.qss_a) st.add_qss_activation_specs(s);
  for (const auto& s : job.w_chosen) st.add_weight_specs(s);
  for (const auto& s : job.a_chosen) st.add_activation_specs(s);
  for (double f : job.sensitivity) st.add_sensitivity(f);
  *st.mutable_result() = job.result;
  st.set_elapsed_seconds(job.progress.ElapsedSeconds());
  data.groups["main"] = ModuleState(*job.model);
  if (!job.pretrained.empty()) data.groups["pretrained"] = job.pretrained;
  if (job.baseline_model) data.groups["baseline"] = ModuleState(*job.baseline_model);
  for (size_t i = 0; i < optimizers.size(); ++i) data.blobs[absl::StrCat("optimizer", i)] = SaveOptimizer(*optimizers[i]);
  return WriteCheckpoint(path, data);
}

}  // namespace qsearch::search
