// TorchScript models of one's own: built here in C++ with define() (conv, linear, a
// residual add, a concat), saved, loaded back, searched end to end; and every bad file.
#include "search/script_model.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "search/data.h"
#include "search/job.h"
#include "search/narrow_conv.h"
#include "search/precheck.h"
#include "search/spec.h"
#include "tests/test_util.h"

namespace qsearch::search {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// This binary's directory for saved models and outputs, removed after a passing run.
std::string Dir() {
  static const std::string dir = ::qsearch::testing::FreshDir("qsearch_script_test");
  return dir;
}

// 1x28x28 -> conv 8 -> pool -> residual conv 8 (h + relu(conv(h))) -> concat [h, h2] ->
// pool -> linear 10.
std::string SaveResidualConcatNet(const std::string& name) {
  torch::manual_seed(3);
  torch::jit::Module m("ResidualConcatNet");
  m.register_parameter("c1", torch::randn({8, 1, 3, 3}) * 0.3, false);
  m.register_parameter("c1b", torch::zeros({8}), false);
  m.register_parameter("c2", torch::randn({8, 8, 3, 3}) * 0.1, false);
  m.register_parameter("fc", torch::randn({10, 16 * 7 * 7}) * 0.02, false);
  m.register_parameter("fcb", torch::zeros({10}), false);
  m.define(R"JIT(
def forward(self, x):
    h = torch.relu(torch.conv2d(x, self.c1, self.c1b, [1, 1], [1, 1]))
    h = torch.max_pool2d(h, [2, 2])
    h2 = h + torch.relu(torch.conv2d(h, self.c2, None, [1, 1], [1, 1]))
    h = torch.max_pool2d(torch.cat([h, h2], 1), [2, 2])
    return torch.linear(torch.flatten(h, 1), self.fc, self.fcb)
)JIT");
  const std::string path = Dir() + "/" + name;
  m.save(path);
  return path;
}

TEST(ScriptModelTest, FindsLayersAndMeasuresThem) {
  const std::string path = SaveResidualConcatNet("net.pt");
  ASSERT_OK_AND_ASSIGN(auto model, LoadScriptModel(path, {1, 28, 28, 10}));
  model->Profile(torch::rand({4, 1, 28, 28}));
  auto layers = model->QuantLayers();
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers[0].first, "c1");
  EXPECT_EQ(layers[1].first, "c2");
  EXPECT_EQ(layers[2].first, "fc");
  EXPECT_EQ(layers[0].second->geometry().kind, "conv2d");
  EXPECT_EQ(layers[2].second->geometry().kind, "linear");
  EXPECT_EQ(layers[0].second->geometry().macs, 8 * 28 * 28 * 9);
  EXPECT_EQ(layers[1].second->geometry().macs, 8 * 14 * 14 * 72);
  EXPECT_EQ(layers[2].second->geometry().macs, 10 * 784);
  EXPECT_EQ(layers[1].second->geometry().act_elems, 8 * 14 * 14);
  // Quantization reaches the model's own computation: a 1-bit fixed policy changes the
  // output, and gradients reach the model's weights through it.
  const at::Tensor x = torch::rand({2, 1, 28, 28});
  const at::Tensor before = model->forward(x).detach();
  for (auto& [name, layer] : layers) ASSERT_OK(layer->SetFixed("binary", "uniform_act:bits=2"));
  model->train();
  at::Tensor out = model->forward(x);
  EXPECT_FALSE(torch::allclose(out, before));
  out.sum().backward();
  EXPECT_TRUE(layers[1].second->weight().grad().defined());
  EXPECT_GT(layers[1].second->weight().grad().abs().sum().item<double>(), 0);
}

TEST(ScriptModelTest, LayersInSubmodulesAreFoundThroughTheirAttributePath) {
  torch::manual_seed(4);
  torch::jit::Module conv("ConvBlock");
  conv.register_parameter("weight", torch::randn({4, 1, 3, 3}) * 0.3, false);
  conv.register_parameter("bias", torch::zeros({4}), false);
  conv.define(R"JIT(
def forward(self, x):
    return torch.relu(torch.conv2d(x, self.weight, self.bias, [1, 1], [1, 1]))
)JIT");
  torch::jit::Module head("Head");
  head.register_parameter("weight", torch::randn({10, 4 * 28 * 28}) * 0.01, false);
  head.define(R"JIT(
def forward(self, x):
    return torch.linear(torch.flatten(x, 1), self.weight, None)
)JIT");
  torch::jit::Module net("Net");
  net.register_module("features", conv);
  net.register_module("classifier", head);
  net.define(R"JIT(
def forward(self, x):
    return self.classifier.forward(self.features.forward(x))
)JIT");
  const std::string path = Dir() + "/nested.pt";
  net.save(path);
  ASSERT_OK_AND_ASSIGN(auto model, LoadScriptModel(path, {1, 28, 28, 10}));
  auto layers = model->QuantLayers();
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0].first, "features");
  EXPECT_EQ(layers[1].first, "classifier");
}

// The first layer of a TorchScript model (one input channel) under QSS runs its
// convolution through NarrowConv2d, with the gradients LibTorch's convolution gives.
TEST(ScriptModelTest, OneChannelFirstLayerTakesTheDirectInputGradient) {
  ASSERT_OK_AND_ASSIGN(auto model, LoadScriptModel(SaveResidualConcatNet("narrow.pt"), {1, 28, 28, 10}));
  model->Profile(torch::rand({4, 1, 28, 28}));
  for (auto& [name, layer] : model->QuantLayers()) {
    // Candidates without running state, so two passes over one batch compute the same.
    ASSERT_OK(layer->SetSearch({"uniform:bits=4,granularity=channel", "pot:bits=3,granularity=channel"},
                               {"pact:bits=4", "lsq_act:bits=4"}));
  }
  model->train();
  torch::manual_seed(5);
  const at::Tensor x = torch::rand({16, 1, 28, 28});
  const at::Tensor y = torch::randint(0, 10, {16}, at::kLong);
  auto gradients = [&] {
    model->zero_grad();
    torch::cross_entropy_loss(model->forward(x), y).backward();
    std::vector<at::Tensor> g;
    for (const auto& p : model->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
    return g;
  };
  const std::int64_t before = NarrowConvCalls();
  const auto direct = gradients();
  EXPECT_EQ(NarrowConvCalls(), before + 1);  // c1 only: c2 has 8 input channels
  EnableNarrowConv(false);
  const auto generic = gradients();
  EnableNarrowConv(true);
  EXPECT_EQ(NarrowConvCalls(), before + 1);
  ASSERT_EQ(direct.size(), generic.size());
  for (size_t i = 0; i < direct.size(); ++i) {
    ASSERT_EQ(direct[i].defined(), generic[i].defined()) << "parameter " << i;
    if (direct[i].defined()) {
      EXPECT_TRUE(at::allclose(direct[i], generic[i], 1e-4, 1e-6))
          << "parameter " << i << ": largest difference " << (direct[i] - generic[i]).abs().max().item<double>();
    }
  }
}

TEST(ScriptModelTest, SearchRunsEndToEndWithinBudget) {
  v1::JobSpec s;
  s.set_model_path(SaveResidualConcatNet("search.pt"));
  s.mutable_dataset()->set_kind("fashion_mnist");
  s.mutable_dataset()->set_train_size(600);
  s.mutable_dataset()->set_val_size(200);
  s.mutable_dataset()->set_test_size(300);
  s.mutable_budget()->set_average_weight_bits(3);
  s.mutable_qpl()->set_activation_bits(4);
  s.set_pretrain_epochs(1);
  s.mutable_qss()->set_epochs(1);
  s.mutable_qpl()->set_epochs(1);
  s.set_finetune_epochs(1);
  s.set_batch_size(100);
  ASSERT_OK(PrecheckSpec(WithDefaults(s)));
  JobOptions options;
  options.out_dir = Dir() + "/out";
  fs::create_directories(options.out_dir);
  ASSERT_OK_AND_ASSIGN(v1::JobResult r, RunSearchJob(s, options));
  ASSERT_EQ(r.policy().layers_size(), 3);
  EXPECT_LE(r.policy().cost().average_weight_bits(), 3.0 + 1e-9);
  EXPECT_GT(r.quantized_accuracy(), 30);  // 10 classes: chance is 10%

  // The exported TorchScript runs with plain LibTorch (no qsearch ops in it) and gives the
  // accuracy the job reported on the same test images.
  torch::jit::Module exported = torch::jit::load(options.out_dir + "/quantized_model.pt");
  exported.eval();
  const std::string code = exported.get_method("forward").graph()->toString();
  EXPECT_THAT(code, ::testing::Not(HasSubstr("qsearch::")));
  // It takes raw images: the normalisation the job used is part of the model.
  EXPECT_EQ(r.policy().input_mean_size(), 1);
  v1::DatasetSpec ds = s.dataset();
  ds.add_mean(0);
  ds.add_std(1);
  ASSERT_OK_AND_ASSIGN(DataSplits data, LoadData(ds));
  torch::NoGradGuard ng;
  const at::Tensor logits = exported.forward({data.test.images}).toTensor();
  const double acc = 100.0 * logits.argmax(1).eq(data.test.labels).sum().item<double>() / data.test.size();
  EXPECT_NEAR(acc, r.quantized_accuracy(), 0.5);
  // Each layer's weight: per output channel, no more distinct values than its bits allow.
  std::map<std::string, at::Tensor> params;
  for (const auto& p : exported.named_parameters()) params[p.name] = p.value;
  for (const auto& l : r.policy().layers()) {
    const at::Tensor w = params.at(l.name());
    const at::Tensor rows = w.reshape({w.size(0), -1});
    for (std::int64_t c = 0; c < rows.size(0); ++c) {
      EXPECT_LE(std::get<0>(at::_unique(rows[c])).numel(), std::int64_t{1} << static_cast<int>(l.weight_bits()))
          << l.name() << " channel " << c;
    }
  }
}

TEST(ScriptModelTest, BadModelsGetClearErrors) {
  const std::string dir = Dir();
  std::ofstream(dir + "/garbage.pt") << "this is not a zip archive";
  auto r = LoadScriptModel(dir + "/garbage.pt", {1, 28, 28, 10});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("is not a TorchScript archive"));

  torch::jit::Module empty("Empty");
  empty.save(dir + "/empty.pt");
  EXPECT_THAT(LoadScriptModel(dir + "/empty.pt", {1, 28, 28, 10}).status().message(), HasSubstr("no forward method"));

  const std::string net = SaveResidualConcatNet("shape.pt");
  r = LoadScriptModel(net, {3, 32, 32, 10});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("does not accept 3x32x32 images"));
  EXPECT_THAT(LoadScriptModel(net, {1, 28, 28, 5}).status().message(), HasSubstr("returns shape [2, 10]"));

  torch::jit::Module plain("NoLayers");
  plain.register_parameter("w", torch::randn({784, 10}), false);
  plain.define(R"JIT(
def forward(self, x):
    return torch.matmul(torch.flatten(x, 1), self.w)
)JIT");
  plain.save(dir + "/plain.pt");
  EXPECT_THAT(LoadScriptModel(dir + "/plain.pt", {1, 28, 28, 10}).status().message(),
              HasSubstr("no quantizable layer"));

  v1::JobSpec s;
  s.set_model_path(dir + "/garbage.pt");
  s.mutable_budget()->set_average_weight_bits(3);
  EXPECT_THAT(PrecheckSpec(WithDefaults(s)).message(), HasSubstr("is not a TorchScript archive"));
}

}  // namespace
}  // namespace qsearch::search
