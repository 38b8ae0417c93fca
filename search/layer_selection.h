// Which layers a job quantizes (NNI-style filters: op_types, op_names, exclude_op_names,
// first / last layer) and the cost table of those it does; budget feasibility. Contract:
// filter names are module paths, and a path covers the layers below it ("layer1" covers
// "layer1.0.conv1"); a filter that covers no layer, or a layer the model cannot quantize
// left selected, is InvalidArgument naming it.
#ifndef QSEARCH_SEARCH_LAYER_SELECTION_H_
#define QSEARCH_SEARCH_LAYER_SELECTION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "qsearch/v1/job.pb.h"
#include "search/cost.h"
#include "search/models.h"

namespace qsearch::search {

struct LayerSelection {
  std::vector<bool> excluded;      // per layer of the model, in layer order
  std::vector<std::string> notes;  // why an excluded layer stays float ("" when selected)
  std::vector<LayerCost> costs;    // the selected layers only, in layer order
};

// True when the filter `filter` names `layer` or a module above it.
bool Covers(const std::string& filter, const std::string& layer);

absl::StatusOr<LayerSelection> SelectLayers(const v1::JobSpec& spec, const std::vector<NamedLayer>& layers,
                                            const std::vector<UnquantizedLayer>& unquantized);

// InvalidArgument, with the numbers, for a budget that even the lowest widths cannot meet.
absl::Status CheckFeasible(const v1::JobSpec& spec, const std::vector<LayerCost>& costs);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_LAYER_SELECTION_H_
