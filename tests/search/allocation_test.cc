// The exact allocation against brute force on random small problems (every dimension of
// the budget, sums and peaks), and its answer to impossible budgets.
#include "search/allocation.h"

#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qsearch::search {
namespace {

// The least error over every combination of options that meets the budget, or -1.
double BruteForce(const AllocationProblem& p) {
  const size_t n = p.layers.size();
  std::vector<size_t> pick(n, 0);
  double best = -1;
  while (true) {
    std::vector<double> w(n), a(n);
    double error = 0;
    for (size_t l = 0; l < n; ++l) {
      w[l] = p.options[l][pick[l]].w_bits;
      a[l] = p.options[l][pick[l]].a_bits;
      error += p.options[l][pick[l]].error;
    }
    if (WithinBudget(ComputeCost(p.layers, w, a, p.budget.activation_memory_peak()), p.budget) &&
        (best < 0 || error < best)) {
      best = error;
    }
    size_t l = 0;
    while (l < n && ++pick[l] == p.options[l].size()) pick[l++] = 0;
    if (l == n) return best;
  }
}

TEST(AllocationTest, MatchesBruteForceAndNeverExceedsTheBudget) {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> layers(1, 6), options(1, 4), bits(1, 8), size(1, 5000), dims(1, 7);
  std::uniform_real_distribution<double> error(0, 10), fraction(0.2, 1.0);
  int solved = 0, infeasible = 0;
  for (int trial = 0; trial < 400; ++trial) {
    AllocationProblem p;
    const int n = layers(rng);
    for (int l = 0; l < n; ++l) {
      p.layers.push_back({"l" + std::to_string(l), size(rng), size(rng) * 10, size(rng)});
      std::vector<AllocationOption> opts;
      for (int k = options(rng); k > 0; --k) opts.push_back({bits(rng), bits(rng), error(rng)});
      p.options.push_back(opts);
    }
    // A budget between the cheapest and the dearest choices, on 1 to 3 dimensions.
    std::vector<double> lo(n, 1), hi(n, 8);
    const CostTotals low = ComputeCost(p.layers, lo, lo, false), high = ComputeCost(p.layers, hi, hi, false);
    const int which = dims(rng);
    if (which & 1) p.budget.set_average_weight_bits(low.avg_bits + fraction(rng) * (high.avg_bits - low.avg_bits));
    if (which & 2) p.budget.set_bitops(low.bitops + fraction(rng) * (high.bitops - low.bitops));
    if (which & 4) {
      p.budget.set_activation_memory_peak(trial % 2 == 0);
      const CostTotals l2 = ComputeCost(p.layers, lo, lo, p.budget.activation_memory_peak());
      const CostTotals h2 = ComputeCost(p.layers, hi, hi, p.budget.activation_memory_peak());
      p.budget.set_activation_memory_bits(l2.act_mem_bits + fraction(rng) * (h2.act_mem_bits - l2.act_mem_bits));
    }
    const double expected = BruteForce(p);
    auto got = SolveAllocation(p);
    if (expected < 0) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << trial;
      ++infeasible;
      continue;
    }
    ASSERT_OK(got);
    EXPECT_NEAR(got->error, expected, 1e-9) << "trial " << trial;
    EXPECT_TRUE(WithinBudget(got->cost, p.budget)) << "trial " << trial;
    double sum = 0;
    for (size_t l = 0; l < p.layers.size(); ++l) sum += p.options[l][got->choice[l]].error;
    EXPECT_NEAR(sum, got->error, 1e-9);
    ++solved;
  }
  EXPECT_GT(solved, 200);
  EXPECT_GT(infeasible, 0);
}

TEST(AllocationTest, FiftyLayersOfEightWidthsSolveQuickly) {
  // A mobilenet-sized problem: the frontier stays small enough.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> size(100, 200000);
  AllocationProblem p;
  double params = 0;
  for (int l = 0; l < 53; ++l) {
    const int n = size(rng);
    params += n;
    p.layers.push_back({"l" + std::to_string(l), n, n * 50, n / 3 + 1});
    std::vector<AllocationOption> opts;
    const double sensitivity = std::uniform_real_distribution<double>(0.1, 10)(rng);
    for (int b = 1; b <= 8; ++b) opts.push_back({b, 4, sensitivity * n * std::ldexp(1.0, -2 * b)});
    p.options.push_back(opts);
  }
  p.budget.set_average_weight_bits(3);
  ASSERT_OK_AND_ASSIGN(Allocation a, SolveAllocation(p));
  EXPECT_LE(a.cost.avg_bits, 3 + 1e-9);
  EXPECT_GT(a.cost.avg_bits, 2.9);  // spends what it may
  EXPECT_LT(a.largest_frontier, p.max_states);
}

}  // namespace
}  // namespace qsearch::search
