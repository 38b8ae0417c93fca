// The cost model's numbers by hand, on doubles and on tensors (QPL's penalty).
#include "search/cost.h"

#include <cmath>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qsearch::search {
namespace {

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

TEST(CostTest, TensorsGiveTheCostAndPenaltyDoublesGive) {
  // QPL's penalty and the reported cost are one formula: on tensors and on doubles alike.
  const std::vector<LayerCost> layers = {{"a", 100, 5000, 300}, {"b", 2000, 90000, 800}, {"c", 50, 700, 40}};
  const std::vector<double> w = {2.5, 3.25, 7}, a = {4, 5, 8};
  v1::Budget budget;
  budget.set_model_size_bits(6000);
  budget.set_average_weight_bits(3);
  budget.set_bitops(1e6);
  budget.set_activation_memory_bits(5000);
  for (const bool peak : {false, true}) {
    const CostTotals d = ComputeCost(layers, w, a, peak);
    std::vector<at::Tensor> wt, at_;
    for (size_t i = 0; i < w.size(); ++i) {
      wt.push_back(at::full({}, w[i], at::kDouble));
      at_.push_back(at::full({}, a[i], at::kDouble));
    }
    const at::Tensor zero = at::zeros({}, at::kDouble);
    const auto max = [](const at::Tensor& x, const at::Tensor& y) { return at::maximum(x, y); };
    const Costs<at::Tensor> t = CostOf<at::Tensor>(layers, wt, at_, peak, zero, max);
    EXPECT_DOUBLE_EQ(t.size_bits.item<double>(), d.size_bits);
    EXPECT_DOUBLE_EQ(t.avg_bits.item<double>(), d.avg_bits);
    EXPECT_DOUBLE_EQ(t.bitops.item<double>(), d.bitops);
    EXPECT_DOUBLE_EQ(t.act_mem_bits.item<double>(), d.act_mem_bits);
    const double l1 = BudgetPenalty<double>(d, budget, 0.0, [](double r) { return std::fabs(r); });
    double by_hand = 0;
    for (const BudgetDim& dim : LimitedDims(budget)) by_hand += std::fabs(d.*dim.field / dim.limit - 1);
    EXPECT_DOUBLE_EQ(l1, by_hand);
    const at::Tensor hinge = BudgetPenalty<at::Tensor>(t, budget, zero, [](const at::Tensor& r) { return at::relu(r); });
    double over = 0;
    for (const BudgetDim& dim : LimitedDims(budget)) over += std::max(0.0, d.*dim.field / dim.limit - 1);
    EXPECT_NEAR(hinge.item<double>(), over, 1e-12);
  }
}

}  // namespace
}  // namespace qsearch::search
