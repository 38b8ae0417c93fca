// Search cost per training step, side by side on one model and batch: a float step, a
// fixed-policy quantized step (fine-tuning, baselines), a QPL step (learned widths), and
// QSS steps (4 weight x 3 activation candidates, composite convolution): joint (weights
// and logits on one batch), bilevel (a second forward/backward on a validation batch for
// the logits) and Gumbel (one sampled candidate per forward). Each as a median of `steps`
// after two warm-up steps, and as a ratio to the float step.
// Run: build/bench/search_step_bench [model] [batch] [steps]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "search/models.h"
#include "search/spec.h"

namespace {

using qsearch::search::QuantModel;

double MedianMs(const std::function<void()>& step, int steps) {
  std::vector<double> ms;
  for (int i = 0; i < steps + 2; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) ms.push_back(t);  // two warm-up steps
  }
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
  at::set_num_threads(2);
  at::manual_seed(0);
  auto built = qsearch::search::BuildModel(name, {1, 28, 28, 10});
  if (!built.ok()) {
    std::fprintf(stderr, "%s\n", built.status().ToString().c_str());
    return 1;
  }
  auto model = *built;
  const at::Tensor x = at::randn({batch, 1, 28, 28}), vx = at::randn({batch, 1, 28, 28});
  const at::Tensor y = at::randint(0, 10, {batch}, at::kLong);
  model->Profile(x.slice(0, 0, 8));
  model->train();
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.01));
  auto train_step = [&](const at::Tensor& in) {
    opt.zero_grad();
    torch::cross_entropy_loss(model->forward(in), y).backward();
    opt.step();
  };
  auto one = [&] { train_step(x); };
  auto two = [&] {
    train_step(x);
    train_step(vx);
  };
  auto layers = model->QuantLayers();
  auto act_for = [](const qsearch::search::QuantLayer& l, const std::string& spec) {
    return l.geometry().input_signed ? spec + ",signed=true" : spec;
  };

  struct Row {
    std::string what;
    double ms;
  };
  std::vector<Row> rows;
  rows.push_back({"float", MedianMs(one, steps)});
  for (auto& [n, l] : layers) Check(l->SetFixed("uniform:bits=4,granularity=channel", act_for(*l, "uniform_act:bits=4")));
  rows.push_back({"fixed policy (w4 uniform, a4 uniform_act)", MedianMs(one, steps)});
  for (auto& [n, l] : layers) {
    Check(l->SetPrecision("uniform:bits=4,granularity=channel", act_for(*l, "uniform_act:bits=4"), 2, 8, 4, 4, 4, 4,
                          false));
  }
  rows.push_back({"QPL (learned weight widths)", MedianMs(one, steps)});
  const auto wc = qsearch::search::DefaultWeightCandidates();
  const auto ac_plain = qsearch::search::DefaultActivationCandidates();
  for (auto& [n, l] : layers) {
    std::vector<std::string> ac = ac_plain;
    if (l->geometry().input_signed) ac = {"uniform_act:bits=4,signed=true", "lsq_act:bits=4,signed=true"};
    Check(l->SetSearch(wc, ac));
  }
  rows.push_back({"QSS joint (one batch)", MedianMs(one, steps)});
  rows.push_back({"QSS bilevel (train + validation batch)", MedianMs(two, steps)});
  for (auto& [n, l] : layers) l->set_gumbel(true);
  rows.push_back({"QSS Gumbel, joint", MedianMs(one, steps)});

  std::printf("model %s, batch %d, 1x28x28 input, %d threads, median of %d steps\n\n", name.c_str(), batch,
              at::get_num_threads(), steps);
  std::printf("| step | ms | / float |\n|---|---|---|\n");
  for (const Row& r : rows) std::printf("| %s | %.1f | %.2fx |\n", r.what.c_str(), r.ms, r.ms / rows[0].ms);
  return 0;
}
