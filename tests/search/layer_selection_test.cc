// Layer selection: NNI-style filters over a real job, module paths covering the layers
// below them, and layers a model cannot quantize.
#include "search/layer_selection.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "search/job.h"
#include "tests/test_util.h"
#include "tests/testing/tiny_spec.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;

TEST(LayerSelectionTest, OpTypesAndNamesChooseTheQuantizedLayers) {
  v1::JobSpec spec = ::qsearch::testing::TinySpec("lenet5");
  spec.set_pretrain_epochs(0);
  spec.mutable_qss()->set_epochs(0);
  spec.mutable_qpl()->set_epochs(0);
  spec.set_finetune_epochs(0);
  spec.add_op_types("Conv2d");  // NNI's spelling
  ASSERT_OK_AND_ASSIGN(v1::JobResult r, RunSearchJob(spec, {}));
  for (const auto& l : r.policy().layers()) EXPECT_EQ(l.excluded(), l.kind() != "conv2d") << l.name();

  spec.clear_op_types();
  spec.add_op_names("fc1");
  spec.add_op_names("fc2");
  spec.add_exclude_op_names("fc2");
  ASSERT_OK_AND_ASSIGN(r, RunSearchJob(spec, {}));
  for (const auto& l : r.policy().layers()) EXPECT_EQ(l.excluded(), l.name() != "fc1") << l.name();

  spec.add_op_names("fc9");
  auto bad = RunSearchJob(spec, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("no layer 'fc9'"));
  spec.clear_op_names();
  spec.add_op_types("lstm");
  EXPECT_THAT(RunSearchJob(spec, {}).status().message(), HasSubstr("unknown op type 'lstm'"));
}

TEST(LayerSelectionTest, ModulePathsCoverTheLayersBelowThem) {
  EXPECT_TRUE(Covers("features.0", "features.0"));
  EXPECT_TRUE(Covers("features.0", "features.0.0"));
  EXPECT_TRUE(Covers("layer1", "layer1.0.conv1"));
  EXPECT_FALSE(Covers("features.1", "features.10.conv"));  // a path, not a prefix of text
  EXPECT_FALSE(Covers("features.0.0", "features.0"));

  std::vector<NamedLayer> layers;
  for (const char* name : {"stem", "blocks.0.conv", "blocks.1.conv", "head"}) {
    layers.emplace_back(name, std::make_shared<QuantLayer>(4, 4, 1));
  }
  UnquantizedLayer up{"up", "aten::conv_transpose2d", 64, "layer 'up' is a aten::conv_transpose2d", true};
  v1::JobSpec spec;
  spec.add_exclude_op_names("blocks");
  spec.add_exclude_op_names("up");
  ASSERT_OK_AND_ASSIGN(LayerSelection s, SelectLayers(spec, layers, {up}));
  EXPECT_EQ(s.excluded, std::vector<bool>({false, true, true, false}));
  EXPECT_EQ(s.notes[1], "excluded by exclude_op_names");
  ASSERT_EQ(s.costs.size(), 2u);
  EXPECT_EQ(s.costs[1].name, "head");
  // A layer the model cannot quantize must be kept in float by name.
  spec.clear_exclude_op_names();
  EXPECT_THAT(std::string(SelectLayers(spec, layers, {up}).status().message()), HasSubstr("conv_transpose2d"));
  spec.add_op_names("stem");  // selecting others keeps it in float too
  EXPECT_OK(SelectLayers(spec, layers, {up}));
  spec.add_op_names("blocks.2");
  EXPECT_THAT(std::string(SelectLayers(spec, layers, {up}).status().message()), HasSubstr("no layer 'blocks.2'"));
}

}  // namespace
}  // namespace qsearch::search
