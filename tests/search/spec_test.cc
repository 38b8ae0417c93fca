// Spec defaults (applied once, idempotent, explicit zeros kept) and validation of every
// field a user sets; the bit widths a scheme allows.
#include "search/spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <google/protobuf/util/message_differencer.h>

#include "search/bit_widths.h"
#include "tests/test_util.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;

TEST(SpecTest, DefaultsFillOnlyWhatIsUnsetAndApplyOnce) {
  const v1::JobSpec d = WithDefaults(v1::JobSpec());
  EXPECT_EQ(d.model(), "lenet5");
  EXPECT_EQ(d.dataset().kind(), "fashion_mnist");
  EXPECT_EQ(d.dataset().augment(), "none");
  EXPECT_EQ(d.budget().average_weight_bits(), 4);
  EXPECT_EQ(d.pretrain_epochs(), 1);
  EXPECT_EQ(d.qss().epochs(), 1);
  // The default pipeline: QSS, then the exact allocation (no QPL epochs).
  EXPECT_EQ(d.qpl().epochs(), 0);
  EXPECT_EQ(d.qpl().init(), "sensitivity");
  EXPECT_EQ(d.finetune_epochs(), 1);
  EXPECT_EQ(d.batch_size(), 128);
  EXPECT_EQ(d.qpl().activation_bits(), 8);
  EXPECT_EQ(d.qpl().penalty(), "l1");
  EXPECT_EQ(d.qpl().min_bits(), 2);  // the default budget: 4 bits on average
  EXPECT_EQ(d.qpl().max_bits(), 8);
  EXPECT_EQ(d.qss().weight_candidates_size(), 4);
  EXPECT_THAT(d.qss().weight_candidates(0), HasSubstr("bits=4"));  // the default budget's width
  EXPECT_OK(ValidateSpec(d));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(WithDefaults(d), d));

  // An explicit 0 stays 0; a user's model is searched as given; uploads are archives;
  // candidates follow the budget's width; image folders augment.
  v1::JobSpec s;
  s.set_model_path("sha256:abc");
  s.set_finetune_epochs(0);
  s.mutable_qss()->set_epochs(0);
  s.mutable_dataset()->set_path("sha256:def");
  s.mutable_budget()->set_average_weight_bits(2.6);
  s.mutable_qpl()->set_activation_bits(4);
  v1::JobSpec u = WithDefaults(s);
  EXPECT_EQ(u.model(), "torchscript");
  EXPECT_EQ(u.pretrain_epochs(), 0);
  EXPECT_EQ(u.finetune_epochs(), 0);
  EXPECT_EQ(u.qss().epochs(), 0);
  EXPECT_EQ(u.qpl().epochs(), 0);
  s.mutable_qpl()->set_epochs(2);
  EXPECT_EQ(WithDefaults(s).qpl().init(), "candidate") << "QPL asked for starts from QSS's widths";
  s.mutable_qpl()->clear_epochs();
  EXPECT_EQ(u.dataset().kind(), "archive");
  EXPECT_EQ(u.budget().average_weight_bits(), 2.6);
  EXPECT_THAT(u.qss().weight_candidates(0), HasSubstr("bits=3"));
  EXPECT_THAT(u.qss().activation_candidates(0), HasSubstr("bits=4"));
  s.mutable_dataset()->set_kind("image_folder");
  EXPECT_EQ(WithDefaults(s).dataset().augment(), "crop_flip");
}

TEST(SpecTest, ValidationNamesTheFieldAtFault) {
  const auto message = [](void (*edit)(v1::JobSpec&)) {
    v1::JobSpec s = WithDefaults(v1::JobSpec());
    edit(s);
    const absl::Status status = ValidateSpec(s);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    return std::string(status.message());
  };
  EXPECT_THAT(message([](v1::JobSpec& s) { s.set_model("alexnet"); }), HasSubstr("unknown model 'alexnet'"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_qss()->add_weight_candidates("pact:bits=3"); }),
              HasSubstr("is an activation scheme"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.add_op_types("lstm"); }), HasSubstr("unknown op type 'lstm'"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_dataset()->set_augment("rotate"); }), HasSubstr("dataset.augment"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_dataset()->add_mean(0.5); }), HasSubstr("the same number"));
  EXPECT_THAT(message([](v1::JobSpec& s) {
                s.mutable_dataset()->add_mean(0.5);
                s.mutable_dataset()->add_std(0);
              }),
              HasSubstr("finite and > 0"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_dataset()->set_channels(2); }), HasSubstr("dataset.channels"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_qpl()->set_min_bits(9); }), HasSubstr("min_bits"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_qpl()->set_penalty("l3"); }), HasSubstr("l1 or hinge"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_qpl()->set_activation_bits(4.5); }), HasSubstr("integer"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.set_pretrain_epochs(-1); }), HasSubstr("epoch counts"));
  EXPECT_THAT(message([](v1::JobSpec& s) { s.mutable_budget()->set_bitops(-5); }), HasSubstr("non-negative"));
}

TEST(SpecTest, OneBitLayersByDefaultOnlyUnderAnAverageBelowThreeBits) {
  const auto floor_for = [](double avg, double given) {
    v1::JobSpec s;
    if (avg > 0) s.mutable_budget()->set_average_weight_bits(avg);
    if (given > 0) s.mutable_qpl()->set_min_bits(given);
    return WithDefaults(s).qpl().min_bits();
  };
  EXPECT_EQ(floor_for(2, 0), 1);
  EXPECT_EQ(floor_for(2.5, 0), 1);
  EXPECT_EQ(floor_for(3, 0), 2);
  EXPECT_EQ(floor_for(4, 0), 2);
  EXPECT_EQ(floor_for(0, 0), 2);  // no budget: the default 4 bits
  EXPECT_EQ(floor_for(2, 2), 2);  // what the spec says stands
  EXPECT_EQ(floor_for(4, 1), 1);
  v1::JobSpec fast;
  fast.set_search_mode("sensitivity");
  fast.mutable_budget()->set_average_weight_bits(2);
  EXPECT_EQ(WithDefaults(fast).qpl().min_bits(), 2);  // measured for the DNAS pipeline only
  v1::JobSpec learned;
  learned.mutable_budget()->set_average_weight_bits(2);
  learned.mutable_qpl()->set_learn_activation_bits(true);
  EXPECT_EQ(WithDefaults(learned).qpl().min_bits(), 2);  // activations share the floor
  learned.mutable_qpl()->set_min_bits(1);
  EXPECT_EQ(WithDefaults(learned).qpl().min_bits(), 1);
}

TEST(BitWidthsTest, WidthsFollowTheSchemeAndTheJob) {
  v1::QplOptions q;
  q.set_min_bits(2);
  q.set_max_bits(8);
  q.set_activation_bits(4);
  EXPECT_EQ(WeightWidths("uniform:bits=4", q), std::vector<int>({2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(WeightWidths("binary", q), std::vector<int>({1}));  // the scheme's own range
  EXPECT_EQ(ActWidths("uniform_act:bits=4", q), std::vector<int>({4}));
  q.set_learn_activation_bits(true);
  q.set_max_bits(5);
  EXPECT_EQ(ActWidths("uniform_act:bits=4", q), std::vector<int>({2, 3, 4, 5}));
  EXPECT_EQ(AtBits("esb:bits=4,k=2", 3), "esb:bits=3,k=2,granularity=tensor,group_size=64");
  EXPECT_EQ(AtBits("esb:bits=4,k=3", 3), "");  // k must stay below bits
  EXPECT_EQ(ForSignedInput({"pact:bits=4", "uniform_act:bits=4"}),
            std::vector<std::string>({"uniform_act:bits=4,signed=true,momentum=0.9,start_step=0"}));
}

}  // namespace
}  // namespace qsearch::search
