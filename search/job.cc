// The search pipeline: the order of its phases, on one screen (Run), and what runs
// between them (loading, evaluation, the timing of each phase).
#include "search/job.h"

#include <chrono>
#include <filesystem>
#include <optional>

#include <c10/core/DeviceGuard.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "quantizers/torch_status.h"
#include "search/baselines.h"
#include "search/device.h"
#include "search/export.h"
#include "search/job_context.h"
#include "search/policy.h"
#include "search/qpl.h"
#include "search/qss.h"
#include "search/repair.h"
#include "search/resume.h"
#include "search/sensitivity.h"
#include "search/spec.h"
#include "search/trainer.h"

namespace qsearch::search {
namespace {

// Wall seconds per phase, into the result: each Lap closes the phase that ran since the
// previous one.
class Laps {
 public:
  explicit Laps(v1::JobResult* result) : result_(result) {}
  void Lap(const char* phase) {
    (*result_->mutable_phase_seconds())[phase] += std::chrono::duration<double>(Clock::now() - start_).count();
    start_ = Clock::now();
  }

 private:
  using Clock = std::chrono::steady_clock;
  v1::JobResult* result_;
  Clock::time_point start_ = Clock::now();
};

// Sets the process's default dtype for a scope (the tensors a job makes without naming one).
class DefaultDtype {
 public:
  explicit DefaultDtype(at::ScalarType t) : saved_(c10::get_default_dtype()) {
    c10::set_default_dtype(c10::scalarTypeToTypeMeta(t));
  }
  ~DefaultDtype() { c10::set_default_dtype(saved_); }
  DefaultDtype(const DefaultDtype&) = delete;
  DefaultDtype& operator=(const DefaultDtype&) = delete;

 private:
  caffe2::TypeMeta saved_;
};

// Training steps of one epoch over the job's training set.
std::int64_t BatchesPerEpoch(const JobContext& job) {
  return (job.data.train.size() + job.spec.batch_size() - 1) / job.spec.batch_size();
}

// Data, model, layer selection and the budget check; warnings about the model (once: a
// resumed job has them in its checkpointed result).
absl::Status Load(JobContext& job) {
  if (job.resume) job.progress.Unnumbered();
  job.progress.Emit({v1::PHASE_LOADING, 0, 0, 0, "loading data and model"});
  ASSIGN_OR_RETURN(job.data, LoadData(job.spec.dataset()));
  if (job.options.float64) {
    for (TensorDataset* split : {&job.data.train, &job.data.val, &job.data.test}) {
      split->images = split->images.to(at::kDouble);
    }
  }
  Tick();
  const DataSplits& d = job.data;
  RETURN_IF_ERROR(CheckTrainingVolume(job.spec, d.train.size()));
  ASSIGN_OR_RETURN(job.model, MakeModel(job.spec, {d.channels, d.height, d.width, d.classes}));
  job.model->to(job.device);
  if (job.options.float64) job.model->to(at::kDouble);
  Tick();
  job.model->Profile(d.train.images.slice(0, 0, std::min<std::int64_t>(64, d.train.size())).to(job.device));
  Tick();
  job.layers = job.model->QuantLayers();
  job.unquantized = job.model->UnquantizedLayers();
  ASSIGN_OR_RETURN(job.selection, SelectLayers(job.spec, job.layers, job.unquantized));
  RETURN_IF_ERROR(CheckFeasible(job.spec, job.selection.costs));
  job.augmentation = AugmentationFor(job.spec.dataset(), d);
  if (!job.resume) {
    job.result.mutable_class_names()->Assign(d.class_names.begin(), d.class_names.end());
    for (const std::string& w : job.model->Warnings()) job.Warn(w);
    if (const int bn = job.model->UnsyncedBatchNorms(); bn > 0 && job.spec.world_size() > 1) {
      job.Warn(absl::StrCat(
          "the model's ", bn, " batch norm(s) run inside its TorchScript code, so each of the job's ",
          job.spec.world_size(), " processes normalises with the statistics of its own share of the batch (about ",
          job.spec.batch_size() / job.spec.world_size(), " images), not of the whole batch; a world_size of 1 "
          "computes them over the whole batch"));
    }
  }
  const int epochs = job.spec.pretrain_epochs() + EpochsAfterPretrain(job.spec) * (1 + job.spec.baselines_size());
  job.progress.steps_total = std::max<std::int64_t>(1, BatchesPerEpoch(job) * epochs);
  return absl::OkStatus();
}

// Float pre-training, the float model's test accuracy, and the snapshot baselines start from.
absl::Status Pretrain(JobContext& job) {
  if (job.options.pretrained != nullptr) {
    RETURN_IF_ERROR(LoadModuleState(*job.model, *job.options.pretrained, "supplied pre-trained weights"));
    // Batches and noise are seeded by the step count (trainer.cc): count the steps these
    // weights replace, so what follows draws what it would after pre-training here.
    job.progress.steps_done += BatchesPerEpoch(job) * job.spec.pretrain_epochs();
    job.progress.Emit({v1::PHASE_PRETRAIN, 0, 0, 0, "pre-trained weights supplied by the caller"});
  } else {
    RETURN_IF_ERROR(TrainWeights(job, v1::PHASE_PRETRAIN, *job.model, job.spec.pretrain_epochs()));
  }
  job.result.set_float_accuracy(Accuracy(*job.model, job.data.test));
  for (const auto& [name, t] : ModuleState(*job.model)) job.pretrained[name] = t.clone();
  if (job.options.on_pretrained) job.options.on_pretrained(job.pretrained);
  return absl::OkStatus();
}

// Where this run's processes are, into the result (a resumed job's checkpoint holds its
// earlier run's).
void RecordDevices(JobContext& job) {
  job.result.mutable_devices()->Assign(job.rank_devices.begin(), job.rank_devices.end());
}

// A resumed job past QPL fixes the policy its checkpoint holds.
absl::Status ApplyChosenPolicy(JobContext& job) {
  for (size_t l = 0; l < job.layers.size(); ++l) {
    if (!job.selection.excluded[l]) RETURN_IF_ERROR(job.layers[l].second->SetFixed(job.w_chosen[l], job.a_chosen[l]));
  }
  job.model->DropArchitectureParams();
  return absl::OkStatus();
}

// The quantized model's test accuracy, into the result and its policy.
v1::Policy Evaluate(JobContext& job) {
  v1::Policy policy = CurrentPolicy(job);
  const bool measure = !Finished(job, v1::PHASE_EVALUATE);
  if (measure) job.result.set_quantized_accuracy(Accuracy(*job.model, job.data.test));
  policy.set_float_accuracy(job.result.float_accuracy());
  policy.set_quantized_accuracy(job.result.quantized_accuracy());
  *job.result.mutable_policy() = policy;
  if (measure) {
    job.progress.Emit({v1::PHASE_EVALUATE, 0, 0, job.result.quantized_accuracy(),
                       absl::StrFormat("float %.2f%%, quantized %.2f%%", job.result.float_accuracy(),
                                       job.result.quantized_accuracy()),
                       &policy});
  }
  return policy;
}

absl::StatusOr<v1::JobResult> Run(JobContext& job) {
  const v1::JobSpec& spec = job.spec;
  at::manual_seed(spec.seed());
  Laps laps(&job.result);
  RETURN_IF_ERROR(LoadResumePoint(job));
  RecordDevices(job);
  RETURN_IF_ERROR(Load(job));
  if (!job.resume) laps.Lap("loading");
  if (!Finished(job, v1::PHASE_PRETRAIN)) {
    RETURN_IF_ERROR(Pretrain(job));
    laps.Lap("pretrain");
  }
  if (spec.fold_batchnorm()) {
    const int folded = job.model->FoldBatchNorm();
    if (!Finished(job, v1::PHASE_PRETRAIN)) {
      job.progress.Emit({v1::PHASE_PRETRAIN, 0, 0, 0, absl::StrCat("folded ", folded, " batch norms")});
    }
  }
  if (spec.search_mode() == "sensitivity") {
    if (Finished(job, v1::PHASE_ALLOCATE)) {
      RETURN_IF_ERROR(ApplyChosenPolicy(job));
    } else {
      RETURN_IF_ERROR(RunAllocation(job));
      laps.Lap("allocate");
    }
  } else {
    RETURN_IF_ERROR(RunQss(job));
    if (!Finished(job, v1::PHASE_QSS)) laps.Lap("qss");
    RETURN_IF_ERROR(RunQpl(job));
    if (Finished(job, v1::PHASE_QPL)) {
      RETURN_IF_ERROR(ApplyChosenPolicy(job));
    } else {
      RETURN_IF_ERROR(RoundAndRepair(job).status());
      laps.Lap(AllocatesWithoutQpl(spec) ? "allocate" : "qpl");
    }
  }
  RETURN_IF_ERROR(TrainWeights(job, v1::PHASE_FINETUNE, *job.model, spec.finetune_epochs()));
  if (!Finished(job, v1::PHASE_FINETUNE)) laps.Lap("finetune");
  const v1::Policy policy = Evaluate(job);
  if (!Finished(job, v1::PHASE_EVALUATE)) laps.Lap("evaluate");
  for (const std::string& name : spec.baselines()) {
    if (Finished(job, BaselinePhase(name))) continue;
    RETURN_IF_ERROR(RunBaseline(job, name));
    laps.Lap(BaselineLap(name));
  }
  if (job.resume && !job.restored) {
    // Resumed after the last training phase: the searched model's tensors come from the
    // checkpoint, for the export.
    RETURN_IF_ERROR(LoadModuleState(*job.model, job.resume->groups["main"], "searched model"));
  }
  if (job.options.rank > 0) return job.result;  // rank 0 exports and reports
  job.model->to(at::kCPU);  // exports are loaded where there may be no GPU
  {
    const quantizers::ScopedReplicas alone(nullptr);  // no collective the others would miss
    RETURN_IF_ERROR(ExportJob(job));
  }
  job.progress.Emit({v1::PHASE_DONE, 0, 0, job.result.quantized_accuracy(), "done", &policy});
  std::error_code ec;
  if (const std::string ckpt = CheckpointPath(job.options); !ckpt.empty()) std::filesystem::remove(ckpt, ec);
  return job.result;
}

}  // namespace

absl::StatusOr<v1::JobResult> RunSearchJob(const v1::JobSpec& raw, const JobOptions& options) {
  const v1::JobSpec spec = WithDefaults(raw);
  RETURN_IF_ERROR(ValidateSpec(spec));
  if (options.threads > 0) at::set_num_threads(options.threads);
  JobContext job(spec, options);
  ASSIGN_OR_RETURN(const std::vector<c10::Device> devices, ParseDevices(options.device));
  for (int r = 0; r < spec.world_size(); ++r) {
    ASSIGN_OR_RETURN(const c10::Device d, RankDevice(devices, spec.world_size(), r));
    job.rank_devices.push_back(d.str());
  }
  ASSIGN_OR_RETURN(job.device, RankDevice(devices, spec.world_size(), options.rank));
  RETURN_IF_ERROR(CheckDevice(job.device));
  const c10::DeviceGuard on_device(job.device);  // ops that take no device run there too
  if (spec.world_size() > 1) {
    Rendezvous r;
    r.rank = options.rank;
    r.world = spec.world_size();
    r.port = options.rendezvous_port;
    r.device = job.device;
    r.own_gpu = job.device.is_cuda() && devices.size() > 1;
    ASSIGN_OR_RETURN(job.dp, DataParallel::Connect(r));
  } else if (options.rank != 0) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", options.rank, " given for a job of world_size 1"));
  }
  const quantizers::ScopedReplicas replicas(job.dp.get());
  std::optional<DefaultDtype> float64;
  if (options.float64) float64.emplace(at::kDouble);
  return CatchTorch("search job", [&] { return Run(job); });
}

}  // namespace qsearch::search
