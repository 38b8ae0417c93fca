// Exact bit allocation: choose one option (weight bits, activation bits) per layer to
// minimise the summed error of a sensitivity model, subject to every limited dimension of
// a budget (model size / average bits, BitOPs, activation memory as a sum or a peak). A
// multiple-choice knapsack with several constraints, solved exactly by dynamic
// programming over Pareto frontiers: after each layer only partial choices that no other
// beats on error and on every cost survive, and partial choices that can no longer meet
// the budget are dropped. Pure arithmetic, no LibTorch.
#ifndef QSEARCH_SEARCH_ALLOCATION_H_
#define QSEARCH_SEARCH_ALLOCATION_H_

#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/v1/quantization.pb.h"
#include "search/cost.h"

namespace qsearch::search {

struct AllocationOption {
  int w_bits = 0, a_bits = 0;
  double error = 0;  // the sensitivity model's error of the layer at these widths
};

struct AllocationProblem {
  std::vector<LayerCost> layers;
  std::vector<std::vector<AllocationOption>> options;  // per layer, at least one
  v1::Budget budget;
  // Partial choices kept after a layer, at most; past it the solver says it gave up
  // (ResourceExhausted) rather than run out of memory.
  std::size_t max_states = 2'000'000;
};

struct Allocation {
  std::vector<int> choice;  // index into each layer's options
  double error = 0;
  CostTotals cost;
  std::size_t largest_frontier = 0;  // partial choices kept after the busiest layer
};

// The least-error allocation within the budget. InvalidArgument (with the numbers) when
// no choice meets it; ResourceExhausted when the frontier outgrows max_states.
absl::StatusOr<Allocation> SolveAllocation(const AllocationProblem& problem);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_ALLOCATION_H_
