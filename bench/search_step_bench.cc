// Search cost per training step, side by side on one model and batch: a float step, a
// fixed-policy quantized step (fine-tuning, baselines), a QPL step (learned widths), and
// QSS steps (4 weight x 3 activation candidates, composite convolution): joint (weights
// and logits on one batch), bilevel (a second forward/backward on a validation batch for
// the logits) and Gumbel (one sampled candidate per forward); and QSS joint once more with
// the first layer's input gradient from LibTorch's convolution instead of NarrowConv2d
// (search/narrow_conv.h), what every step paid before it. Each as a median of `steps`
// after two warm-up steps, and as a ratio to the float step. Every arm trains its own copy
// of the model and the arms take turns step by step, so a slow spell of the machine lands
// on all of them rather than on whichever arm ran then.
// Then, for the float and fixed-policy arms, one evaluation batch of 512 images (eval
// mode, no gradient: what every test and validation pass runs), likewise interleaved.
// Run: build/bench/search_step_bench [model] [batch] [steps] [arms: all | fixed | qss] [as]
// ("fixed": float and the fixed policy; "qss": float and both QSS joint arms; `as`, to
// measure what qsearch-worker does against what it did before: "glibc" leaves glibc's
// allocator settings as they are instead of keeping freed tensor memory,
// common/tensor_heap.h; "baseline" runs the quantizer kernels without AVX2,
// quantizers/point_kernel.h; "glibc,baseline" both). With QSEARCH_TRACE_DIR set, each
// arm also writes a LibTorch profiler trace of three more steps there, and the two
// evaluation arms one of three more batches.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "common/tensor_heap.h"
#include "quantizers/point_kernel.h"
#include "search/models.h"
#include "search/narrow_conv.h"
#include "search/spec.h"

namespace {

using qsearch::search::QuantModel;

double Median(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "resnet20";
  const int batch = argc > 2 ? std::stoi(argv[2]) : 128;
  const int steps = argc > 3 ? std::stoi(argv[3]) : 7;
  const std::string arms_arg = argc > 4 ? argv[4] : "all";
  const std::string as = argc > 5 ? argv[5] : "";
  const bool glibc_heap = as.find("glibc") != std::string::npos;
  if (!glibc_heap) qsearch::KeepFreedTensorMemory();
  if (as.find("baseline") != std::string::npos) {
    qsearch::quantizers::SetKernelIsaForTesting(qsearch::quantizers::KernelIsa::kBaseline);
  }
  at::set_num_threads(2);
  at::manual_seed(0);
  const at::Tensor x = at::randn({batch, 1, 28, 28}), vx = at::randn({batch, 1, 28, 28});
  const at::Tensor y = at::randint(0, 10, {batch}, at::kLong);

  struct Arm {
    std::string what;
    std::shared_ptr<QuantModel> model;
    std::unique_ptr<torch::optim::SGD> opt;
    bool bilevel = false;
    bool generic_conv = false;  // LibTorch's input gradient for the first layer
    std::vector<double> ms;
  };
  std::vector<Arm> arms;
  // Each arm: the same initial weights (same seed), then `setup` puts its layers in a mode.
  auto add = [&](const std::string& what, bool bilevel,
                 const std::function<void(qsearch::search::QuantLayer&)>& setup) {
    at::manual_seed(0);
    auto built = qsearch::search::BuildModel(name, {1, 28, 28, 10});
    if (!built.ok()) {
      std::fprintf(stderr, "%s\n", built.status().ToString().c_str());
      std::exit(1);
    }
    Arm a;
    a.what = what;
    a.model = *built;
    a.model->Profile(x.slice(0, 0, 8));
    a.model->train();
    for (auto& [n, l] : a.model->QuantLayers()) {
      if (setup) setup(*l);
    }
    a.opt = std::make_unique<torch::optim::SGD>(a.model->parameters(), torch::optim::SGDOptions(0.01));
    a.bilevel = bilevel;
    arms.push_back(std::move(a));
  };
  auto act_for = [](const qsearch::search::QuantLayer& l, const std::string& spec) {
    return l.geometry().input_signed ? spec + ",signed=true" : spec;
  };
  const auto wc = qsearch::search::DefaultWeightCandidates();
  const auto ac_plain = qsearch::search::DefaultActivationCandidates();
  auto search = [&](qsearch::search::QuantLayer& l, bool gumbel) {
    std::vector<std::string> ac = ac_plain;
    if (l.geometry().input_signed) ac = {"uniform_act:bits=4,signed=true", "lsq_act:bits=4,signed=true"};
    Check(l.SetSearch(wc, ac));
    l.set_gumbel(gumbel);
  };

  add("float", false, nullptr);
  if (arms_arg != "qss") {
    add("fixed policy (w4 uniform, a4 uniform_act)", false, [&](qsearch::search::QuantLayer& l) {
      Check(l.SetFixed("uniform:bits=4,granularity=channel", act_for(l, "uniform_act:bits=4")));
    });
  }
  auto generic = [&](const std::string& what) {
    add(what, false, [&](qsearch::search::QuantLayer& l) { search(l, false); });
    arms.back().generic_conv = true;
  };
  if (arms_arg == "qss") {
    add("QSS joint (one batch)", false, [&](qsearch::search::QuantLayer& l) { search(l, false); });
    generic("QSS joint, LibTorch's first-layer input gradient");
  } else if (arms_arg != "fixed") {
    add("QPL (learned weight widths)", false, [&](qsearch::search::QuantLayer& l) {
      Check(l.SetPrecision("uniform:bits=4,granularity=channel", act_for(l, "uniform_act:bits=4"), 2, 8, 4, 4, 4,
                           4, false));
    });
    add("QSS joint (one batch)", false, [&](qsearch::search::QuantLayer& l) { search(l, false); });
    add("QSS bilevel (train + validation batch)", true, [&](qsearch::search::QuantLayer& l) { search(l, false); });
    add("QSS Gumbel, joint", false, [&](qsearch::search::QuantLayer& l) { search(l, true); });
    generic("QSS joint, LibTorch's first-layer input gradient");
  }

  auto train_step = [&](Arm& a, const at::Tensor& in) {
    a.opt->zero_grad();
    torch::cross_entropy_loss(a.model->forward(in), y).backward();
    a.opt->step();
  };
  for (int i = 0; i < steps + 2; ++i) {
    for (Arm& a : arms) {
      qsearch::search::EnableNarrowConv(!a.generic_conv);
      const auto t0 = std::chrono::steady_clock::now();
      train_step(a, x);
      if (a.bilevel) train_step(a, vx);
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (i >= 2) a.ms.push_back(t);  // two warm-up steps
    }
  }

  // QSEARCH_TRACE_DIR: three more steps of each arm under LibTorch's profiler, one Chrome
  // trace per arm (DIR/arm<i>.json), to see which operators a step's time goes to.
  if (const char* dir = std::getenv("QSEARCH_TRACE_DIR"); dir != nullptr) {
    for (size_t k = 0; k < arms.size(); ++k) {
      Arm& a = arms[k];
      qsearch::search::EnableNarrowConv(!a.generic_conv);
      torch::autograd::profiler::RecordProfile trace(std::string(dir) + "/arm" + std::to_string(k) + ".json");
      for (int i = 0; i < 3; ++i) {
        train_step(a, x);
        if (a.bilevel) train_step(a, vx);
      }
    }
  }

  std::printf("model %s, batch %d, 1x28x28 input, %d threads, median of %d steps, arms interleaved, %s, %s\n\n",
              name.c_str(), batch, at::get_num_threads(), steps,
              glibc_heap ? "glibc's default heap" : "freed tensor memory kept (as qsearch-worker)",
              qsearch::quantizers::ActiveKernelIsa() == qsearch::quantizers::KernelIsa::kAvx2 ? "AVX2 kernels"
                                                                                             : "baseline kernels");
  std::printf("| step | ms | / float |\n|---|---|---|\n");
  const double base = Median(arms[0].ms);
  for (const Arm& a : arms) {
    const double m = Median(a.ms);
    std::printf("| %s | %.1f | %.2fx |\n", a.what.c_str(), m, m / base);
  }

  // Evaluation: float and the fixed policy (the second arm unless only QSS arms ran).
  if (arms_arg == "qss") return 0;
  const at::Tensor ex = at::randn({512, 1, 28, 28});
  std::vector<double> eval_ms[2];
  for (int i = 0; i < steps + 2; ++i) {
    for (int k = 0; k < 2; ++k) {
      at::NoGradGuard no_grad;
      arms[k].model->eval();
      const auto t0 = std::chrono::steady_clock::now();
      arms[k].model->forward(ex).argmax(1).sum().item<std::int64_t>();
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (i >= 2) eval_ms[k].push_back(t);
      arms[k].model->train();
    }
  }
  std::printf("\n| evaluation batch (512 images) | ms | / float |\n|---|---|---|\n");
  for (int k = 0; k < 2; ++k) {
    std::printf("| %s | %.1f | %.2fx |\n", arms[k].what.c_str(), Median(eval_ms[k]),
                Median(eval_ms[k]) / Median(eval_ms[0]));
  }
  // QSEARCH_TRACE_DIR: three more evaluation batches of both arms (DIR/eval<k>.json).
  if (const char* dir = std::getenv("QSEARCH_TRACE_DIR"); dir != nullptr) {
    for (int k = 0; k < 2; ++k) {
      at::NoGradGuard no_grad;
      arms[k].model->eval();
      torch::autograd::profiler::RecordProfile trace(std::string(dir) + "/eval" + std::to_string(k) + ".json");
      for (int i = 0; i < 3; ++i) arms[k].model->forward(ex).argmax(1).sum().item<std::int64_t>();
      arms[k].model->train();
    }
  }
  return 0;
}
