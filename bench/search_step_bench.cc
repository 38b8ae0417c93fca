// Search cost: one QSS training step (4 weight x 3 activation candidates, composite
// convolution) divided by one float training step, same model and batch, side by side.
// Run: build/bench/search_step_bench [model] [batch] [steps] [acts]
// acts: "default" (the job's default activation candidates: uniform_act, pact, lsq_act)
// or "two-ranges" (uniform_act at 4 and 8 bits and lsq_act: two range passes per input).
// Prints the median step time of each and the ratio.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "search/job.h"
#include "search/spec.h"
#include "search/models.h"

namespace {

using qsearch::search::QuantModel;

double MedianStepMs(QuantModel& model, torch::optim::Optimizer& opt, const at::Tensor& x,
                    const at::Tensor& y, int steps) {
  std::vector<double> ms;
  for (int i = 0; i < steps + 2; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    torch::cross_entropy_loss(model.forward(x), y).backward();
    opt.step();
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) ms.push_back(t);  // two warm-up steps
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
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
  at::Tensor x = at::randn({batch, 1, 28, 28});
  at::Tensor y = at::randint(0, 10, {batch}, at::kLong);
  model->Profile(x.slice(0, 0, 8));
  model->train();

  torch::optim::SGD float_opt(model->parameters(), torch::optim::SGDOptions(0.01));
  const double float_ms = MedianStepMs(*model, float_opt, x, y, steps);

  const std::string acts = argc > 4 ? argv[4] : "default";
  const auto wc = qsearch::search::DefaultWeightCandidates();
  std::vector<std::string> ac = {"uniform_act:bits=4,signed=true", "lsq_act:bits=4,signed=true",
                                 "uniform_act:bits=8,signed=true"};
  if (acts == "default") ac = qsearch::search::DefaultActivationCandidates();
  for (auto& [layer_name, layer] : model->QuantLayers()) {
    auto s = layer->SetSearch(wc, ac);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
  }
  torch::optim::SGD qss_opt(model->parameters(), torch::optim::SGDOptions(0.01));
  const double qss_ms = MedianStepMs(*model, qss_opt, x, y, steps);

  std::printf("model %s, batch %d, 1x28x28 input, %d threads, median of %d steps\n", name.c_str(),
              batch, at::get_num_threads(), steps);
  std::printf("float training step: %8.1f ms\n", float_ms);
  std::printf("QSS training step:   %8.1f ms  (%zu weight x %zu activation candidates, %s)\n", qss_ms,
              wc.size(), ac.size(), acts.c_str());
  std::printf("ratio QSS / float:   %8.2fx\n", qss_ms / float_ms);
  return 0;
}
