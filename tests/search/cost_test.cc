// Cost model numbers by hand, and BudgetRepair as a property over random problems.
#include "search/cost.h"

#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "search/models.h"
#include "tests/test_util.h"

namespace qsearch::search {
namespace {

TEST(LayerTableTest, Lenet5GeometryMatchesHandCount) {
  auto model = BuildModel("lenet5", {1, 28, 28, 10});
  ASSERT_OK(model);
  (*model)->Profile(at::randn({2, 1, 28, 28}));
  auto layers = (*model)->QuantLayers();
  ASSERT_EQ(layers.size(), 5u);
  struct Want { const char* name; std::int64_t params, macs, act; };
  // conv1: 6x1x5x5 weights, 28x28x6 outputs x 25 MACs; conv2: 16x6x5x5 on 14x14 -> 10x10.
  const Want want[] = {{"conv1", 150, 28 * 28 * 6 * 25, 784},
                       {"conv2", 2400, 10 * 10 * 16 * 150, 6 * 14 * 14},
                       {"fc1", 400 * 120, 400 * 120, 400},
                       {"fc2", 120 * 84, 120 * 84, 120},
                       {"fc3", 84 * 10, 84 * 10, 84}};
  for (size_t i = 0; i < 5; ++i) {
    const auto& g = layers[i].second->geometry();
    EXPECT_EQ(layers[i].first, want[i].name);
    EXPECT_EQ(g.params, want[i].params) << want[i].name;
    EXPECT_EQ(g.macs, want[i].macs) << want[i].name;
    EXPECT_EQ(g.act_elems, want[i].act) << want[i].name;
  }
  EXPECT_TRUE(layers[0].second->geometry().input_signed);   // normalised image
  EXPECT_FALSE(layers[1].second->geometry().input_signed);  // after ReLU + pool
}

TEST(CostTest, TotalsByHand) {
  std::vector<LayerCost> layers = {{"a", 100, 1000, 50}, {"b", 300, 2000, 10}};
  CostTotals c = ComputeCost(layers, {4, 2}, {8, 4}, /*act_peak=*/false);
  EXPECT_DOUBLE_EQ(c.size_bits, 100 * 4 + 300 * 2);
  EXPECT_DOUBLE_EQ(c.avg_bits, 1000.0 / 400);
  EXPECT_DOUBLE_EQ(c.bitops, 1000 * 4 * 8 + 2000 * 2 * 4);
  EXPECT_DOUBLE_EQ(c.act_mem_bits, 50 * 8 + 10 * 4);
  EXPECT_DOUBLE_EQ(ComputeCost(layers, {4, 2}, {8, 4}, true).act_mem_bits, 400);
  v1::Budget b;
  b.set_average_weight_bits(2.5);
  EXPECT_TRUE(WithinBudget(c, b));
  EXPECT_DOUBLE_EQ(Slack(c, b).avg_bits, 0);
  b.set_bitops(40000);
  EXPECT_FALSE(WithinBudget(c, b));
  EXPECT_DOUBLE_EQ(Slack(c, b).bitops, 40000 - 48000);
}

TEST(CostTest, BudgetWithoutLimitsIsRejected) {
  v1::Budget b;
  EXPECT_EQ(ValidateBudget(b).code(), absl::StatusCode::kInvalidArgument);
  b.set_bitops(-1);
  EXPECT_EQ(ValidateBudget(b).code(), absl::StatusCode::kInvalidArgument);
  b.set_bitops(10);
  EXPECT_OK(ValidateBudget(b));
}

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
