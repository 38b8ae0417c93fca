// Data-parallel replicas of one model. When a job runs in several processes, each holding
// a copy of the model and a share of every batch, what a layer observes on its share
// (activation ranges, a first batch's step size, batch-norm moments) is combined over the
// replicas here, so every copy keeps the state one process would have on the whole batch.
// Contract: with no active replicas (one process) nothing is combined and nothing changes;
// with them, every replica makes the same calls in the same order (identical models and
// control flow), since each call is a collective.
#ifndef QSEARCH_QUANTIZERS_REPLICAS_H_
#define QSEARCH_QUANTIZERS_REPLICAS_H_

#include <ATen/core/Tensor.h>

namespace qsearch::quantizers {

class Replicas {
 public:
  virtual ~Replicas() = default;
  virtual int world() const = 0;
  // In place: the element-wise sum / maximum over the replicas.
  virtual void Sum(at::Tensor& t) = 0;
  virtual void Max(at::Tensor& t) = 0;
  // The sum over the replicas as part of the autograd graph: its backward sums the
  // incoming gradients over the replicas, since every replica's loss depends on it.
  virtual at::Tensor SumWithGrad(const at::Tensor& t) = 0;
  // Rows of the batch in progress over the rows of this replica's share of it (about
  // world()): what an activation's element count is multiplied by to count the whole
  // batch, e.g. for LSQ's gradient scale.
  virtual double WholeBatchRatio() const = 0;
};

// The replicas this process's model belongs to; null when it runs alone.
Replicas* ActiveReplicas();

// Makes `r` the active replicas while it lives (one at a time per process).
class ScopedReplicas {
 public:
  explicit ScopedReplicas(Replicas* r);
  ~ScopedReplicas();
  ScopedReplicas(const ScopedReplicas&) = delete;
  ScopedReplicas& operator=(const ScopedReplicas&) = delete;

 private:
  Replicas* previous_;
};

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_REPLICAS_H_
