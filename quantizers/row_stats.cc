// Eight independent lanes per statistic, which the compiler vectorises without
// reassociating, folded together at each row's end.
#include "quantizers/row_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include <ATen/ATen.h>

namespace qsearch::quantizers {
namespace {

constexpr int kLanes = 8;

// Two passes: extremes and sums, then squared deviations from the mean (E[x^2] - mean^2
// would cancel badly when |mean| is large against the spread). Sums in double.
void RowOf(const float* v, std::int64_t n, RowStats& s, std::int64_t r) {
  float lo[kLanes], hi[kLanes];
  double sum[kLanes], abs_sum[kLanes], dev[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    lo[l] = std::numeric_limits<float>::infinity();
    hi[l] = -std::numeric_limits<float>::infinity();
    sum[l] = abs_sum[l] = dev[l] = 0;
  }
  const std::int64_t whole = n / kLanes * kLanes;
  for (std::int64_t i = 0; i < whole; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float x = v[i + l];
      lo[l] = std::min(lo[l], x);
      hi[l] = std::max(hi[l], x);
      sum[l] += x;
      abs_sum[l] += std::fabs(x);
    }
  }
  double mn = std::numeric_limits<double>::infinity(), mx = -mn, total = 0, total_abs = 0;
  for (int l = 0; l < kLanes; ++l) {
    mn = std::min<double>(mn, lo[l]);
    mx = std::max<double>(mx, hi[l]);
    total += sum[l];
    total_abs += abs_sum[l];
  }
  for (std::int64_t i = whole; i < n; ++i) {
    const double x = v[i];
    mn = std::min(mn, x);
    mx = std::max(mx, x);
    total += x;
    total_abs += std::fabs(x);
  }
  const double mean = total / n;
  for (std::int64_t i = 0; i < whole; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double d = v[i + l] - mean;
      dev[l] += d * d;
    }
  }
  double total_dev = 0;
  for (int l = 0; l < kLanes; ++l) total_dev += dev[l];
  for (std::int64_t i = whole; i < n; ++i) total_dev += (v[i] - mean) * (v[i] - mean);
  s.min[r] = mn;
  s.max[r] = mx;
  s.abs_max[r] = std::max(-mn, mx);
  s.abs_mean[r] = total_abs / n;
  s.mean[r] = mean;
  s.std[r] = std::sqrt(total_dev / n);
}

struct Shared {
  int open = 0;  // scopes open on this thread
  const c10::TensorImpl* tensor = nullptr;
  std::int64_t segment_size = 0;
  RowStats stats;
};
thread_local Shared shared;

}  // namespace

RowStats ComputeRowStats(const at::Tensor& x, std::int64_t segment_size) {
  const at::Tensor c = x.detach().to(at::kFloat).cpu().contiguous();
  const std::int64_t rows = segment_size > 0 ? c.numel() / segment_size : 0;
  RowStats s;
  s.segment_size = segment_size;
  for (auto* v : {&s.min, &s.max, &s.abs_max, &s.abs_mean, &s.mean, &s.std}) v->assign(rows, 0.0);
  const float* data = c.data_ptr<float>();
  for (std::int64_t r = 0; r < rows; ++r) RowOf(data + r * segment_size, segment_size, s, r);
  return s;
}

const RowStats& SharedRowStats(const at::Tensor& x, std::int64_t segment_size) {
  if (shared.open == 0 || shared.tensor != x.unsafeGetTensorImpl() || shared.segment_size != segment_size) {
    shared.stats = ComputeRowStats(x, segment_size);
    shared.tensor = shared.open > 0 ? x.unsafeGetTensorImpl() : nullptr;
    shared.segment_size = segment_size;
  }
  return shared.stats;
}

RowStatsScope::RowStatsScope() { ++shared.open; }

RowStatsScope::~RowStatsScope() {
  if (--shared.open == 0) shared.tensor = nullptr;
}

}  // namespace qsearch::quantizers
