// Layer selection and budget feasibility.
#include "search/layer_selection.h"

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace qsearch::search {

bool Covers(const std::string& filter, const std::string& layer) {
  return layer == filter || (layer.size() > filter.size() && layer[filter.size()] == '.' && absl::StartsWith(layer, filter));
}
namespace {

bool AnyCovers(const google::protobuf::RepeatedPtrField<std::string>& filters, const std::string& layer) {
  return std::any_of(filters.begin(), filters.end(), [&](const std::string& f) { return Covers(f, layer); });
}

}  // namespace

absl::StatusOr<LayerSelection> SelectLayers(const v1::JobSpec& spec, const std::vector<NamedLayer>& layers,
                                            const std::vector<UnquantizedLayer>& unquantized) {
  LayerSelection out;
  std::vector<bool>* excluded = &out.excluded;
  std::vector<std::string>* notes = &out.notes;
  std::vector<LayerCost>* costs = &out.costs;
  excluded->assign(layers.size(), false);
  notes->assign(layers.size(), "");
  std::vector<std::string> names;
  for (const auto& [name, layer] : layers) names.push_back(name);
  for (const auto& u : unquantized) names.push_back(u.name);
  auto check_names = [&](const auto& list, const char* field) -> absl::Status {
    for (const auto& n : list) {
      if (std::none_of(names.begin(), names.end(), [&](const std::string& l) { return Covers(n, l); })) {
        constexpr size_t kShown = 100;
        std::vector<std::string> shown(names.begin(), names.begin() + std::min(names.size(), kShown));
        if (names.size() > kShown) shown.push_back(absl::StrCat("... (", names.size(), " in all)"));
        return absl::InvalidArgumentError(absl::StrCat(field, ": model ", spec.model(), " has no layer '", n,
                                                       "' (nor one below that path); its layers are ",
                                                       absl::StrJoin(shown, ", ")));
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_names(spec.op_names(), "op_names"));
  RETURN_IF_ERROR(check_names(spec.exclude_op_names(), "exclude_op_names"));
  for (const auto& u : unquantized) {
    const bool kept_float = AnyCovers(spec.exclude_op_names(), u.name) ||
                            (!spec.op_names().empty() && !AnyCovers(spec.op_names(), u.name));
    if (u.needs_exclusion && !kept_float) return absl::InvalidArgumentError(u.reason);
  }
  std::set<std::string> types;
  for (const auto& t : spec.op_types()) types.insert(absl::AsciiStrToLower(t));
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& [name, layer] = layers[l];
    std::string& why = (*notes)[l];
    if (!spec.op_names().empty() && !AnyCovers(spec.op_names(), name)) why = "not selected by op_names";
    if (AnyCovers(spec.exclude_op_names(), name)) why = "excluded by exclude_op_names";
    if (!types.empty() && !types.count(layer->geometry().kind)) why = "op type not selected by op_types";
  }
  if (spec.exclude_first() && !layers.empty()) notes->front() = "first layer (exclude_first)";
  if (spec.exclude_last() && !layers.empty()) notes->back() = "last layer (exclude_last)";
  costs->clear();
  for (size_t l = 0; l < layers.size(); ++l) {
    (*excluded)[l] = !(*notes)[l].empty();
    if ((*excluded)[l]) continue;
    const auto& g = layers[l].second->geometry();
    costs->push_back({layers[l].first, g.params, g.macs, g.act_elems});
  }
  if (costs->empty()) {
    return absl::InvalidArgumentError("the layer selection (op_types, op_names, exclude_*) leaves nothing to quantize");
  }
  return out;
}

absl::Status CheckFeasible(const v1::JobSpec& spec, const std::vector<LayerCost>& costs) {
  const double lo = std::max(spec.qpl().min_bits(), 1.0);
  const double act = spec.qpl().learn_activation_bits() ? lo : spec.qpl().activation_bits();
  std::vector<double> wb(costs.size(), lo), ab(costs.size(), act);
  const CostTotals floor = ComputeCost(costs, wb, ab, spec.budget().activation_memory_peak());
  if (WithinBudget(floor, spec.budget())) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "infeasible budget: at the lowest widths (%.3g-bit weights, %.3g-bit activations) "
      "the model needs %.6g weight bits (%.3f average), %.6g BitOPs and %.6g activation "
      "bits, which exceeds the limits",
      lo, act, floor.size_bits, floor.avg_bits, floor.bitops, floor.act_mem_bits));
}

}  // namespace qsearch::search
