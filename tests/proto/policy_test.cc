// The public contract: a Policy survives protobuf's JSON mapping and binary encoding.
#include <gtest/gtest.h>
#include <google/protobuf/util/json_util.h>

#include "qsearch/v1/quantization.pb.h"

namespace qsearch {
namespace {

v1::Policy SamplePolicy() {
  v1::Policy p;
  p.set_model("lenet5");
  p.mutable_budget()->set_average_weight_bits(3);
  v1::LayerPolicy* l = p.add_layers();
  l->set_name("conv1");
  l->set_kind("conv2d");
  l->mutable_weight()->set_spec("esb:bits=4,k=1,granularity=tensor,group_size=64");
  l->mutable_weight()->set_scheme("esb");
  (*l->mutable_weight()->mutable_params())["bits"] = "4";
  l->set_weight_bits(4);
  l->set_activation_bits(4);
  l->set_params(150);
  l->set_macs(117600);
  p.mutable_cost()->set_average_weight_bits(2.9);
  p.mutable_slack()->set_average_weight_bits(0.1);
  return p;
}

TEST(PolicyProtoTest, JsonRoundTripKeepsEveryField) {
  const v1::Policy p = SamplePolicy();
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(p, &json).ok());
  EXPECT_NE(json.find("\"averageWeightBits\":3"), std::string::npos) << json;
  EXPECT_NE(json.find("esb:bits=4,k=1"), std::string::npos) << json;
  v1::Policy back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_EQ(back.SerializeAsString(), p.SerializeAsString());
  EXPECT_EQ(back.layers(0).weight().params().at("bits"), "4");
}

TEST(PolicyProtoTest, RejectsMalformedJson) {
  v1::Policy back;
  EXPECT_FALSE(google::protobuf::util::JsonStringToMessage("{\"layers\": 3}", &back).ok());
  EXPECT_FALSE(google::protobuf::util::JsonStringToMessage("{\"nope\": 1}", &back).ok());
}

}  // namespace
}  // namespace qsearch
