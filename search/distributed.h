// Data parallelism for one job over PyTorch's c10d. The job's processes (ranks 0..world-1,
// all on the node that runs it) meet at a TCPStore that rank 0 hosts on 127.0.0.1 and
// talk through a ProcessGroupGloo; each takes a contiguous share of every batch, and the
// group is the model's active quantizers::Replicas, so observed statistics and batch-norm
// moments cover the whole batch. Contract: every rank makes the same collective calls in
// the same order; a peer that dies fails the next collective (a c10::Error, which the job
// turns into Internal) within the timeout instead of hanging.
#ifndef QSEARCH_SEARCH_DISTRIBUTED_H_
#define QSEARCH_SEARCH_DISTRIBUTED_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/statusor.h"
#include "quantizers/replicas.h"

namespace qsearch::search {

struct Rendezvous {
  int rank = 0;
  int world = 1;
  int port = 0;  // rank 0's TCPStore on 127.0.0.1
  // This rank's device. When every rank has a GPU of its own the collectives run over
  // NCCL in a build with QSEARCH_NCCL; otherwise (the CPU, ranks sharing a GPU, which NCCL
  // refuses) over Gloo, which a CUDA LibTorch builds with CUDA support.
  c10::Device device = c10::kCPU;
  bool own_gpu = false;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

class DataParallel : public quantizers::Replicas {
 public:
  // Blocks until all `world` ranks joined; Internal naming c10d's error when they do not
  // within the timeout.
  static absl::StatusOr<std::unique_ptr<DataParallel>> Connect(const Rendezvous& r);
  ~DataParallel() override;

  int rank() const { return rank_; }
  int world() const override { return world_; }
  void Sum(at::Tensor& t) override;
  void Max(at::Tensor& t) override;
  at::Tensor SumWithGrad(const at::Tensor& t) override;
  double WholeBatchRatio() const override { return whole_batch_ratio_; }

  // The rows [begin, end) of a batch of n this rank takes: contiguous, sizes differing by
  // at most one, in rank order. The batch of n is then the one in progress
  // (WholeBatchRatio).
  std::pair<std::int64_t, std::int64_t> StartBatch(std::int64_t n);

  // Sums the gradients of `params` (those that have one) over the ranks, in one
  // collective with `extra` (e.g. the share of the loss) appended; returns the summed extra.
  double SumGradients(const std::vector<at::Tensor>& params, double extra);

 private:
  struct Group;
  DataParallel(int rank, int world, c10::Device device, std::unique_ptr<Group> group);
  int rank_, world_;
  c10::Device device_;
  double whole_batch_ratio_;
  std::unique_ptr<Group> group_;
};

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_DISTRIBUTED_H_
