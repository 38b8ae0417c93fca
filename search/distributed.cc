// c10d: TCPStore rendezvous, ProcessGroupGloo collectives, the autograd sum.
#include "search/distributed.h"

// LibTorch is built with Gloo; its header declares the Gloo group only under this macro.
#define USE_C10D_GLOO 1

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#ifdef QSEARCH_NCCL  // a CUDA LibTorch (CMake option QSEARCH_NCCL); its header needs the macro too
#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "quantizers/torch_status.h"

namespace qsearch::search {

struct DataParallel::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef QSEARCH_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;  // instead of gloo, for CUDA tensors
#endif

  void AllReduce(at::Tensor& t, c10d::ReduceOp op) {
    std::vector<at::Tensor> tensors = {t};
    c10d::AllreduceOptions o;
    o.reduceOp = op;
#ifdef QSEARCH_NCCL
    if (nccl) {
      nccl->allreduce(tensors, o)->wait();
      return;
    }
#endif
    gloo->allreduce(tensors, o)->wait();
  }
};

namespace {

// Sum over the ranks in the forward pass and, for the gradient, in the backward pass.
class SumOverRanks : public torch::autograd::Function<SumOverRanks> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& t, std::int64_t group) {
    ctx->saved_data["group"] = group;
    at::Tensor out = t.detach().clone();
    reinterpret_cast<DataParallel*>(group)->Sum(out);
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    at::Tensor g = grads[0].contiguous().clone();
    reinterpret_cast<DataParallel*>(ctx->saved_data["group"].toInt())->Sum(g);
    return {g, at::Tensor()};
  }
};

}  // namespace

DataParallel::DataParallel(int rank, int world, c10::Device device, std::unique_ptr<Group> group)
    : rank_(rank), world_(world), device_(device), whole_batch_ratio_(world), group_(std::move(group)) {}
DataParallel::~DataParallel() = default;

absl::StatusOr<std::unique_ptr<DataParallel>> DataParallel::Connect(const Rendezvous& r) {
  if (r.world < 1 || r.rank < 0 || r.rank >= r.world) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", r.rank, " is not in a world of ", r.world));
  }
  if (r.port <= 0 || r.port > 65535) return absl::InvalidArgumentError(absl::StrCat("rendezvous port ", r.port));
  auto group = std::make_unique<Group>();
  absl::Status s = CatchTorch("joining the job's other processes", [&]() -> absl::Status {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(r.port);
    so.isServer = r.rank == 0;
    so.numWorkers = r.world;
    so.waitWorkers = true;
    so.timeout = r.timeout;
    group->store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
    auto options = c10d::ProcessGroupGloo::Options::create(r.timeout);
    options->devices = {c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")};
    options->threads = 1;
#ifdef QSEARCH_NCCL
    if (r.device.is_cuda() && r.own_gpu) {
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = r.timeout;
      group->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(group->store, r.rank, r.world, nccl_options);
      return absl::OkStatus();
    }
#endif
    group->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, r.rank, r.world, options);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return std::unique_ptr<DataParallel>(new DataParallel(r.rank, r.world, r.device, std::move(group)));
}

void DataParallel::Sum(at::Tensor& t) { group_->AllReduce(t, c10d::ReduceOp::SUM); }
void DataParallel::Max(at::Tensor& t) { group_->AllReduce(t, c10d::ReduceOp::MAX); }

at::Tensor DataParallel::SumWithGrad(const at::Tensor& t) {
  return SumOverRanks::apply(t, reinterpret_cast<std::int64_t>(this));
}

std::pair<std::int64_t, std::int64_t> DataParallel::StartBatch(std::int64_t n) {
  const std::int64_t base = n / world_, extra = n % world_;
  const std::int64_t begin = rank_ * base + std::min<std::int64_t>(rank_, extra);
  const std::int64_t rows = base + (rank_ < extra ? 1 : 0);
  whole_batch_ratio_ = static_cast<double>(n) / static_cast<double>(std::max<std::int64_t>(1, rows));
  return {begin, begin + rows};
}

double DataParallel::SumGradients(const std::vector<at::Tensor>& params, double extra) {
  torch::NoGradGuard ng;
  std::vector<at::Tensor> flat;
  std::vector<at::Tensor> grads;
  // Summed in the parameters' own precision (float32, or float64 for a --float64 job).
  const at::ScalarType dtype = params.empty() ? at::kFloat : params.front().scalar_type();
  for (const at::Tensor& p : params) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    flat.push_back(g.reshape({-1}).to(dtype));
  }
  flat.push_back(at::full({1}, extra, at::TensorOptions(dtype).device(device_)));
  at::Tensor buffer = at::cat(flat);
  Sum(buffer);
  std::int64_t offset = 0;
  for (at::Tensor& g : grads) {
    g.copy_(buffer.slice(0, offset, offset + g.numel()).view_as(g));
    offset += g.numel();
  }
  return buffer[offset].item<double>();
}

}  // namespace qsearch::search
