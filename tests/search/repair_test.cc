// BudgetRepair as a property over random problems, and its choice of layer.
#include "search/repair.h"

#include <random>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qsearch::search {
namespace {

TEST(RepairTest, RandomProblemsAlwaysEndWithinBudget) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> params(10, 5000), layers_n(1, 12), bits(2, 8);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  int feasible = 0, infeasible = 0;
  for (int trial = 0; trial < 300; ++trial) {
    RepairProblem p;
    const int n = layers_n(rng);
    std::vector<double> sens(n);
    for (int l = 0; l < n; ++l) {
      p.layers.push_back({"l", params(rng), params(rng) * 10, params(rng)});
      p.w_allowed.push_back({2, 3, 4, 5, 6, 7, 8});
      p.a_allowed.push_back(unit(rng) < 0.5 ? std::vector<int>{4} : std::vector<int>{2, 4, 6, 8});
      p.w_bits.push_back(bits(rng));
      p.a_bits.push_back(p.a_allowed.back()[rng() % p.a_allowed.back().size()]);
      sens[l] = unit(rng) * 10;
    }
    p.w_error = [&](int l, int b) { return sens[l] * std::ldexp(1.0, -2 * b); };
    p.a_error = [&](int l, int b) { return std::ldexp(1.0, -2 * b); };
    // Random mix of limits, some infeasible.
    if (unit(rng) < 0.7) p.budget.set_average_weight_bits(1.5 + unit(rng) * 6);
    if (unit(rng) < 0.4) {
      std::vector<double> w(n, 5), a(n, 4);
      p.budget.set_bitops(ComputeCost(p.layers, w, a, false).bitops * (0.3 + unit(rng)));
    }
    if (!p.budget.average_weight_bits() && !p.budget.bitops()) p.budget.set_model_size_bits(1e9);
    auto r = RepairToBudget(p);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(std::string(r.status().message()).find("infeasible budget"), std::string::npos);
      // Really infeasible: the lowest widths break the budget.
      std::vector<double> w(n, 2), a(n);
      for (int l = 0; l < n; ++l) a[l] = p.a_allowed[l].front();
      EXPECT_FALSE(WithinBudget(ComputeCost(p.layers, w, a, false), p.budget));
      ++infeasible;
      continue;
    }
    ++feasible;
    std::vector<double> w(r->w_bits.begin(), r->w_bits.end()), a(r->a_bits.begin(), r->a_bits.end());
    EXPECT_TRUE(WithinBudget(ComputeCost(p.layers, w, a, false), p.budget)) << "trial " << trial;
    for (int l = 0; l < n; ++l) {
      const auto& ok = p.a_allowed[l];
      EXPECT_NE(std::find(ok.begin(), ok.end(), r->a_bits[l]), ok.end());
      EXPECT_GE(r->w_bits[l], 2);
      EXPECT_LE(r->w_bits[l], 8);
    }
  }
  EXPECT_GT(feasible, 100);
  EXPECT_GT(infeasible, 5);
}

TEST(RepairTest, LowersTheLeastSensitiveLayerFirst) {
  RepairProblem p;
  p.layers = {{"sensitive", 100, 0, 0}, {"robust", 100, 0, 0}};
  p.w_allowed = {{2, 3, 4}, {2, 3, 4}};
  p.a_allowed = {{8}, {8}};
  p.w_bits = {4, 4};
  p.a_bits = {8, 8};
  p.w_error = [](int l, int b) { return (l == 0 ? 100.0 : 1.0) * std::ldexp(1.0, -2 * b); };
  p.a_error = [](int, int) { return 0.0; };
  p.budget.set_average_weight_bits(3);
  auto r = RepairToBudget(p);
  ASSERT_OK(r);
  EXPECT_EQ(r->w_bits, (std::vector<int>{4, 2}));
  EXPECT_DOUBLE_EQ(r->cost.avg_bits, 3.0);
}

}  // namespace
}  // namespace qsearch::search
