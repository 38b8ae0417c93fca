// Per-segment statistics of a weight tensor, computed together and shared by the
// candidates of a QSS mixture.
//
// Every weight scheme's Prepare reduces the same [segments, segment_size] view to a few
// numbers per row (max |w|, min, max, mean, std, mean |w|). Done with ATen that is about
// ten small ops per candidate; on a small model's layers the dispatch costs more than the
// arithmetic. ComputeRowStats computes them all in plain loops, and inside a RowStatsScope the
// result for one tensor is computed once and handed to every candidate that asks.
#ifndef QSEARCH_QUANTIZERS_ROW_STATS_H_
#define QSEARCH_QUANTIZERS_ROW_STATS_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace qsearch::quantizers {

struct RowStats {
  std::int64_t segment_size = 0;
  std::vector<double> min, max, abs_max, abs_mean, mean, std;  // std: population (divides by n)
  std::int64_t rows() const { return static_cast<std::int64_t>(min.size()); }
};

// Statistics of x (float32, any shape) viewed as rows of segment_size elements.
// REQUIRES: x.numel() is a multiple of segment_size.
RowStats ComputeRowStats(const at::Tensor& x, std::int64_t segment_size);

// The statistics of x, computed once per (tensor, segment size) while a RowStatsScope is
// open on this thread, and on every call otherwise. The returned reference lives until
// the next call on this thread or the scope's end.
const RowStats& SharedRowStats(const at::Tensor& x, std::int64_t segment_size);

// Opens the sharing window: construct it around a loop of Prepare calls on one tensor
// that nothing modifies meanwhile. Scopes nest; sharing ends with the outermost.
class RowStatsScope {
 public:
  RowStatsScope();
  ~RowStatsScope();
  RowStatsScope(const RowStatsScope&) = delete;
  RowStatsScope& operator=(const RowStatsScope&) = delete;
};

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_ROW_STATS_H_
