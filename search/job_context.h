// What the phases of one search job share (internal to search/): the spec as it runs,
// the data, the model and its layers, the choices made so far, the result, progress and
// the checkpoint to resume from. Each phase (trainer.h, qss.h, qpl.h, repair.h,
// baselines.h, export.h) is a free function over it; job.cc runs them in order.
#ifndef QSEARCH_SEARCH_JOB_CONTEXT_H_
#define QSEARCH_SEARCH_JOB_CONTEXT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "qsearch/v1/job.pb.h"
#include "search/checkpoint.h"
#include "search/data.h"
#include "search/distributed.h"
#include "search/job.h"
#include "search/layer_selection.h"
#include "search/models.h"
#include "search/progress.h"

namespace qsearch::search {

struct JobContext {
  JobContext(const v1::JobSpec& spec, const JobOptions& options)
      : spec(spec), options(options), progress(options.on_event) {}

  bool Cancelled() const { return options.cancel != nullptr && options.cancel->load(); }
  // A warning event, also kept in the result.
  void Warn(const std::string& message);

  const v1::JobSpec spec;  // defaults applied, validated
  const JobOptions options;
  c10::Device device = c10::kCPU;  // this process's (device.h); batches move here
  std::vector<std::string> rank_devices;  // every process's, in rank order (for the result)
  DataSplits data;
  Augmentation augmentation;  // of training batches
  std::shared_ptr<QuantModel> model;           // the model being searched
  std::shared_ptr<QuantModel> baseline_model;  // while a baseline trains
  std::vector<NamedLayer> layers;              // model->QuantLayers()
  std::vector<UnquantizedLayer> unquantized;   // model->UnquantizedLayers()
  LayerSelection selection;
  TensorMap pretrained;                        // the float model after pre-training
  std::vector<std::string> qss_w, qss_a;       // QSS's choice per layer ("" excluded)
  std::vector<std::string> w_chosen, a_chosen; // the final policy's specs
  std::vector<double> sensitivity;             // per layer, once the allocation measured it
  v1::JobResult result;
  Progress progress;
  // The job's other processes when spec.world_size > 1 (distributed.h); null alone.
  std::unique_ptr<DataParallel> dp;
  std::int64_t batch_images = 0;  // size of the whole batch being trained on
  std::optional<CheckpointData> resume;  // the checkpoint this run continues from
  bool restored = false;                 // its tensors are loaded
};

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_JOB_CONTEXT_H_
