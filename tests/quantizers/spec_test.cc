// Spec strings, the registry, and input validation.
#include "quantizers/spec.h"

#include <set>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "quantizers/fractional.h"
#include "quantizers/quantizer.h"
#include "tests/test_util.h"

namespace qsearch::quantizers {
namespace {

using ::testing::HasSubstr;

TEST(RegistryTest, ListsEverySchemeOnceWithBits) {
  std::set<std::string> names;
  for (const auto& s : Schemes()) {
    EXPECT_TRUE(names.insert(s.name).second) << s.name;
    ASSERT_NE(s.FindParam("bits"), nullptr) << s.name;
    EXPECT_FALSE(s.doc.empty()) << s.name;
  }
  for (const char* want : {"uniform", "lsq", "dorefa", "binary", "ternary", "residual", "pot",
                           "vecq", "ul2q", "esb", "uniform_act", "pact", "lsq_act",
                           "dorefa_act"}) {
    EXPECT_EQ(names.count(want), 1u) << want;
  }
  EXPECT_EQ(FindScheme("esb")->FindParam("k")->max, 7);
  EXPECT_THAT(SchemeNames(Role::kActivation), HasSubstr("pact"));
}

TEST(SpecTest, EverySchemeRoundTripsThroughToSpec) {
  for (const auto& s : Schemes()) {
    auto q = MakeQuantizer(s.name);
    ASSERT_OK(q);
    const std::string spec = (*q)->ToSpec();
    EXPECT_EQ(spec.rfind(s.name + ":", 0), 0u) << spec;
    auto again = MakeQuantizer(spec);
    ASSERT_OK(again);
    EXPECT_EQ((*again)->ToSpec(), spec);
  }
}

TEST(SpecTest, NonDefaultValuesRoundTrip) {
  for (const char* spec :
       {"uniform:bits=3,symmetric=false,signed=true,granularity=group,group_size=16",
        "esb:bits=6,k=3,granularity=channel,group_size=64", "uniform_act:bits=5,signed=true,"
        "momentum=0.5,start_step=10", "pact:bits=2,alpha=3.5", "ternary:bits=2,threshold=0.5,"
        "granularity=channel,group_size=64", "ul2q:bits=2.5,granularity=tensor,group_size=64"}) {
    auto q = MakeQuantizer(spec);
    ASSERT_OK(q);
    EXPECT_EQ((*q)->ToSpec(), spec);
  }
}

TEST(SpecTest, CanonicalFormFillsDefaultsInRegistryOrder) {
  auto q = MakeQuantizer(" esb : k=2 , bits=5 ");
  ASSERT_OK(q);
  EXPECT_EQ((*q)->ToSpec(), "esb:bits=5,k=2,granularity=tensor,group_size=64");
  auto b = MakeQuantizer("uniform:bits=4,symmetric=1");
  ASSERT_OK(b);
  EXPECT_EQ((*b)->values().Text("symmetric"), "true");
}

TEST(SpecTest, FractionalBitsMakeFracBits) {
  auto q = MakeQuantizer("uniform:bits=3.25");
  ASSERT_OK(q);
  EXPECT_NE(dynamic_cast<FracBitsQuantizer*>(q->get()), nullptr);
  EXPECT_EQ((*q)->bits(), 3.25);
  EXPECT_THAT((*q)->ToSpec(), HasSubstr("bits=3.25"));
}

TEST(SpecTest, ThirtyTwoBitsIsPassthrough) {
  auto q = MakeQuantizer("esb:bits=32");
  ASSERT_OK(q);
  EXPECT_TRUE((*q)->passthrough());
  at::Tensor x = at::randn({4, 5});
  EXPECT_TRUE(at::equal((*q)->forward(x), x));
}

void ExpectInvalid(const std::string& spec, const std::string& mention) {
  auto q = MakeQuantizer(spec);
  ASSERT_FALSE(q.ok()) << spec;
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << spec;
  EXPECT_THAT(std::string(q.status().message()), HasSubstr(mention)) << spec;
}

TEST(SpecTest, BadSpecsNameTheProblem) {
  ExpectInvalid("fancy:bits=4", "unknown quantizer scheme 'fancy'");
  ExpectInvalid("fancy", "weight schemes: uniform");
  ExpectInvalid("", "empty quantizer spec");
  ExpectInvalid("uniform:bitz=4", "unknown key 'bitz'");
  ExpectInvalid("uniform:bitz=4", "valid keys: bits");
  ExpectInvalid("uniform:bits=9", "'bits' must be in [1, 8] or 32");
  ExpectInvalid("lsq:bits=1", "'bits' must be in [2, 8]");
  ExpectInvalid("uniform:bits=four", "'bits' must be a number");
  ExpectInvalid("uniform:bits=4,bits=5", "'bits' given twice");
  ExpectInvalid("uniform:bits", "expected KEY=VALUE");
  ExpectInvalid("uniform:symmetric=maybe", "'symmetric' must be true or false");
  ExpectInvalid("uniform:granularity=row", "must be one of tensor, channel, group");
  ExpectInvalid("esb:bits=3,k=3", "'k' must be <= bits-1");
  ExpectInvalid("esb:k=1.5", "'k' must be an integer");
  ExpectInvalid("binary:bits=1.5", "'bits' must be in [1, 1]");
  ExpectInvalid("ternary:bits=3", "'bits' must be in [2, 2]");
  ExpectInvalid("uniform:bits=1", "symmetric signed grid");
  ExpectInvalid("uniform:bits=nan", "must be a number");
  ExpectInvalid("lsq:granularity=channel", "unknown key 'granularity'");
}

TEST(ValidateTest, RejectsInputsItCannotQuantize) {
  auto per_channel = MakeQuantizer("uniform:bits=4,granularity=channel");
  ASSERT_OK(per_channel);
  absl::Status s = (*per_channel)->Validate(at::randn({16}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank >= 2"));

  auto group = MakeQuantizer("uniform:bits=4,granularity=group,group_size=5");
  ASSERT_OK(group);
  s = (*group)->Validate(at::randn({4, 8}));
  EXPECT_THAT(std::string(s.message()), HasSubstr("group_size=5 does not divide the 8"));
  EXPECT_OK((*group)->Validate(at::randn({4, 10})));

  auto q = MakeQuantizer("esb:bits=4,k=1");
  ASSERT_OK(q);
  at::Tensor nan = at::randn({3, 3});
  nan[1][1] = std::numeric_limits<float>::quiet_NaN();
  auto out = (*q)->Quantize(nan);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("NaN or Inf"));
  at::Tensor inf = at::randn({3});
  inf[0] = std::numeric_limits<float>::infinity();
  EXPECT_EQ((*q)->Validate(inf).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string((*q)->Validate(at::ones({3}, at::kInt)).message()),
              HasSubstr("float32 or float64"));
  EXPECT_THAT(std::string((*q)->Validate(at::randn({3}, at::kHalf)).message()),
              HasSubstr("float32 or float64"));
  EXPECT_OK((*q)->Validate(at::randn({3}, at::kDouble)));
  EXPECT_THAT(std::string((*q)->Validate(at::Tensor()).message()), HasSubstr("empty"));
}

TEST(ValidateTest, Float64InputIsQuantizedAsFloat32InputIs) {
  // A float64 job (search/job.h) quantizes float64 tensors through the ATen forms (the
  // fused kernels read float32): the levels are float32's up to float32 rounding, and the
  // result stays float64.
  at::manual_seed(3);
  const at::Tensor w = at::randn({8, 16});
  for (const char* spec : {"uniform:bits=4", "lsq:bits=3", "pot:bits=4", "ternary", "residual:bits=2",
                           "ul2q:bits=2,granularity=channel"}) {
    SCOPED_TRACE(spec);
    auto q = MakeQuantizer(spec);
    ASSERT_OK(q);
    auto narrow = (*q)->Quantize(w);
    ASSERT_OK(narrow);
    auto wide = (*q)->Quantize(w.to(at::kDouble));
    ASSERT_OK(wide);
    EXPECT_EQ(wide->scalar_type(), at::kDouble);
    EXPECT_LE((*wide - narrow->to(at::kDouble)).abs().max().item<double>(), 1e-5);
  }
}

TEST(ValidateTest, UncheckedForwardDoesNotThrowOnNaN) {
  // Documented behaviour of the hot path: no check and no exception; the values are
  // unspecified (statistics turn NaN). Quantize() is the checked entry point.
  auto q = MakeQuantizer("uniform:bits=4");
  ASSERT_OK(q);
  at::Tensor x = at::tensor({-1.0f, 0.0f, 1.0f, std::numeric_limits<float>::quiet_NaN()});
  at::Tensor y = (*q)->forward(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_FALSE((*q)->Quantize(x).ok());
}

}  // namespace
}  // namespace qsearch::quantizers
