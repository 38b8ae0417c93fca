// Issue 14's side-by-side benchmark: what qsearch's default pipeline (QSS, then the exact
// allocation over the chosen schemes: arm qss_exact) and QSS + QPL buy over
// the policies a user would pick instead, on the real Fashion-MNIST (10k test images for
// every accuracy), at average 2, 3 and 4 weight bits with 4-bit activations.
//
// Arms, all trained on the same schedule after one shared float pre-training per model
// and seed: float; uniform; uniform with first and last layer at 8 bits; sensitivity
// (Fisher x quantization error, exact allocation); QSS only (every layer at the budget's
// width, schemes searched); QSS + exact allocation (the default pipeline); QSS + QPL; at
// 2 bits also QSS + QPL with qpl.min_bits 1. A second table compares QSS settings (bilevel with a logits step
// every 1 or 4 weight steps, joint) by accuracy and by time against float training.
//
// Every finished job appends its rows to --results (tab-separated); a rerun skips what is
// there, so the command resumes where it stopped. The tables (medians over seeds) are
// printed at the end and written to <results>.md.
//
// Run: build/bench/allocation_bench [--results FILE] [--models a,b] [--budgets 2,3,4]
//        [--seeds 1,2,3] [--no-variants] [--quick] [--only arm,arm]
// --only runs just the named variant arms (no baselines' job), e.g. to compare a setting.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/tensor_heap.h"
#include "search/baselines.h"
#include "search/job.h"

namespace {

using qsearch::v1::JobResult;
using qsearch::v1::JobSpec;
using TensorMap = std::map<std::string, at::Tensor>;

struct Preset {
  std::int64_t train, val;
  int pretrain, qss, qpl, finetune;
};

// Sized so the three models x three budgets x three seeds fit in under two hours on two
// cores: lenet5 on 20k images, the two CNNs on 4k, one epoch per search phase.
Preset PresetFor(const std::string& model, bool quick) {
  if (quick) return {1000, 300, 1, 1, 1, 1};
  if (model == "lenet5") return {20000, 2000, 4, 1, 1, 1};
  return {4000, 1000, 4, 1, 1, 1};
}

struct Row {
  std::string model, arm;
  int budget = 0, seed = 0;
  double accuracy = 0, seconds = 0, bits = 0;
  bool skipped = false;  // the arm cannot fit the budget (uniform_first_last_8 at 2 bits)
};

std::string Key(const std::string& model, int budget, int seed, const std::string& arm) {
  return absl::StrCat(model, "/", budget, "/", seed, "/", arm);
}

class Results {
 public:
  explicit Results(std::string path) : path_(std::move(path)) {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, '\t');
      if (f.size() != 8 || f[0] == "model") continue;
      Row r;
      r.model = f[0];
      r.arm = f[3];
      if (!absl::SimpleAtoi(f[1], &r.budget) || !absl::SimpleAtoi(f[2], &r.seed) ||
          !absl::SimpleAtod(f[4], &r.accuracy) || !absl::SimpleAtod(f[5], &r.seconds) ||
          !absl::SimpleAtod(f[6], &r.bits)) {
        continue;
      }
      r.skipped = f[7] == "skipped";
      rows_[Key(r.model, r.budget, r.seed, r.arm)] = r;
    }
  }
  bool Has(const std::string& model, int budget, int seed, const std::string& arm) const {
    return rows_.count(Key(model, budget, seed, arm)) > 0;
  }
  void Add(const Row& r) {
    rows_[Key(r.model, r.budget, r.seed, r.arm)] = r;
    std::ofstream out(path_, std::ios::app);
    out << absl::StrFormat("%s\t%d\t%d\t%s\t%.2f\t%.1f\t%.3f\t%s\n", r.model, r.budget, r.seed, r.arm,
                           r.accuracy, r.seconds, r.bits, r.skipped ? "skipped" : "ok");
    std::printf("  %-16s avg %d seed %d %-22s %s  %.1f s\n", r.model.c_str(), r.budget, r.seed, r.arm.c_str(),
                r.skipped ? "skipped (does not fit)" : absl::StrFormat("%.2f%% @ %.2f bits", r.accuracy, r.bits).c_str(),
                r.seconds);
    std::fflush(stdout);
  }
  std::vector<Row> Select(const std::string& model, int budget, const std::string& arm) const {
    std::vector<Row> out;
    for (const auto& [k, r] : rows_) {
      if (r.model == model && r.budget == budget && r.arm == arm && !r.skipped) out.push_back(r);
    }
    return out;
  }
  bool AnySkipped(const std::string& model, int budget, const std::string& arm) const {
    for (const auto& [k, r] : rows_) {
      if (r.model == model && r.budget == budget && r.arm == arm && r.skipped) return true;
    }
    return false;
  }

 private:
  std::string path_;
  std::map<std::string, Row> rows_;
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

JobSpec BaseSpec(const std::string& model, int budget, int seed, bool quick) {
  const Preset p = PresetFor(model, quick);
  JobSpec s;
  s.set_model(model);
  s.mutable_dataset()->set_kind("fashion_mnist");
  s.mutable_dataset()->set_train_size(p.train);
  s.mutable_dataset()->set_val_size(p.val);
  s.mutable_dataset()->set_test_size(quick ? 2000 : 10000);
  s.mutable_dataset()->set_seed(seed);
  s.mutable_budget()->set_average_weight_bits(budget);
  s.mutable_qpl()->set_activation_bits(4);
  s.set_pretrain_epochs(p.pretrain);
  s.mutable_qss()->set_epochs(p.qss);
  s.mutable_qpl()->set_epochs(p.qpl);
  s.set_finetune_epochs(p.finetune);
  s.set_batch_size(128);
  s.set_seed(seed);
  return s;
}

double Seconds(const JobResult& r, std::initializer_list<const char*> laps) {
  double t = 0;
  for (const char* lap : laps) {
    auto it = r.phase_seconds().find(lap);
    if (it != r.phase_seconds().end()) t += it->second;
  }
  return t;
}

// Arms of one model and seed share the float weights of the first job that pre-trains.
class Runner {
 public:
  Runner(Results* results, bool quick) : results_(results), quick_(quick) {}

  absl::StatusOr<JobResult> Run(const JobSpec& spec) {
    qsearch::search::JobOptions options;
    options.threads = 2;
    const std::string key = absl::StrCat(spec.model(), "/", spec.seed());
    auto it = pretrained_.find(key);
    if (it != pretrained_.end()) {
      options.pretrained = &it->second;
    } else {
      options.on_pretrained = [this, key](const TensorMap& state) {
        TensorMap copy;
        for (const auto& [name, t] : state) copy[name] = t.clone();
        pretrained_[key] = std::move(copy);
      };
    }
    return qsearch::search::RunSearchJob(spec, options);
  }

  // The default pipeline with the baselines that are still missing.
  void Main(const std::string& model, int budget, int seed, bool with_float) {
    std::vector<std::string> arms = {"uniform", "uniform_first_last_8", "sensitivity", "qss_qpl"};
    if (with_float) arms.insert(arms.begin(), "float");
    bool missing = false;
    for (const auto& a : arms) missing = missing || !results_->Has(model, budget, seed, a);
    if (!missing) return;
    JobSpec s = BaseSpec(model, budget, seed, quick_);
    for (const auto& a : arms) {
      if (a != "qss_qpl") s.add_baselines(a);
    }
    auto r = Run(s);
    if (!r.ok()) return Fail(model, budget, seed, "qss_qpl", r.status());
    results_->Add({model, "qss_qpl", budget, seed, r->quantized_accuracy(),
                   Seconds(*r, {"qss", "qpl", "allocate", "finetune", "evaluate"}), r->policy().cost().average_weight_bits()});
    results_->Add({model, "qss_qpl:qss", budget, seed, r->quantized_accuracy(), Seconds(*r, {"qss"}),
                   r->policy().cost().average_weight_bits()});
    for (const auto& b : r->baselines()) {
      const double bits = b.name() == "float" ? 32 : b.policy().cost().average_weight_bits();
      results_->Add({model, b.name(), budget, seed, b.accuracy(), Seconds(*r, {qsearch::search::BaselineLap(b.name())}), bits});
    }
    for (const auto& a : arms) {
      if (!results_->Has(model, budget, seed, a)) {  // ran, but could not fit the budget
        Row skipped{model, a, budget, seed};
        skipped.skipped = true;
        results_->Add(skipped);
      }
    }
  }

  // A QSS + QPL-shaped job under another setting; `arm` names it in the results. Same
  // total epochs as the others (QSS only moves QPL's epoch to fine-tuning).
  void Variant(const std::string& model, int budget, int seed, const std::string& arm) {
    if (results_->Has(model, budget, seed, arm)) return;
    JobSpec s = BaseSpec(model, budget, seed, quick_);
    if (arm == "qss_only") {  // every layer at the candidates' width
      s.set_finetune_epochs(s.finetune_epochs() + s.qpl().epochs());
      s.mutable_qpl()->set_epochs(0);
      s.mutable_qpl()->set_init("candidate");
    } else if (arm == "qss_exact" || arm == "qss_exact_min1") {  // min1: 1-bit layers allowed
      s.set_finetune_epochs(s.finetune_epochs() + s.qpl().epochs());
      s.mutable_qpl()->set_epochs(0);
      s.mutable_qpl()->set_init("sensitivity");
      if (arm == "qss_exact_min1") s.mutable_qpl()->set_min_bits(1);
    } else if (arm == "qss_qpl_min1") {
      s.mutable_qpl()->set_min_bits(1);
    } else if (arm == "bilevel_every1" || arm == "bilevel_every4") {
      s.mutable_qss()->set_bilevel(true);
      s.mutable_qss()->set_arch_every(arm == "bilevel_every1" ? 1 : 4);
    }
    auto r = Run(s);
    if (!r.ok()) return Fail(model, budget, seed, arm, r.status());
    Row row{model, arm, budget, seed, r->quantized_accuracy(), Seconds(*r, {"qss", "qpl", "allocate", "finetune", "evaluate"}),
            r->policy().cost().average_weight_bits()};
    results_->Add(row);
    std::printf("    %s phases:", arm.c_str());  // where the search's time went
    for (const char* lap : {"qss", "qpl", "allocate", "finetune", "evaluate"}) {
      std::printf(" %s %.2f s", lap, Seconds(*r, {lap}));
    }
    std::printf("\n");
    // The QSS epoch alone, for the cost table.
    results_->Add({model, arm + ":qss", budget, seed, r->quantized_accuracy(), Seconds(*r, {"qss"}),
                   r->policy().cost().average_weight_bits()});
  }

 private:
  void Fail(const std::string& model, int budget, int seed, const std::string& arm, const absl::Status& s) {
    std::fprintf(stderr, "%s avg %d seed %d %s failed: %s\n", model.c_str(), budget, seed, arm.c_str(),
                 s.ToString().c_str());
    failures_++;
  }

  Results* results_;
  bool quick_;
  std::map<std::string, TensorMap> pretrained_;

 public:
  int failures_ = 0;
};

std::string Cell(const Results& res, const std::string& model, int budget, const std::string& arm, bool time) {
  const std::vector<Row> rows = res.Select(model, budget, arm);
  if (rows.empty()) return res.AnySkipped(model, budget, arm) ? "does not fit" : "-";
  std::vector<double> acc, sec, bits;
  for (const Row& r : rows) {
    acc.push_back(r.accuracy);
    sec.push_back(r.seconds);
    bits.push_back(r.bits);
  }
  std::string out = absl::StrFormat("%.2f", Median(acc));
  if (rows.size() < 3) absl::StrAppend(&out, " (", rows.size(), " seed", rows.size() > 1 ? "s" : "", ")");
  if (time) {
    const double t = Median(sec);
    absl::StrAppend(&out, t < 10 ? absl::StrFormat(" / %.1f s", t) : absl::StrFormat(" / %.0f s", t));
  }
  return out;
}

std::string Tables(const Results& res, const std::vector<std::string>& models, const std::vector<int>& budgets,
                   bool quick) {
  std::string md;
  absl::StrAppend(&md, "Test accuracy (%, median of seeds, 10k test images) / wall time of the arm after the shared ",
                  "pre-training (its training and test evaluation)", quick ? " — QUICK PRESET, not comparable" : "",
                  ".\n\n");
  const std::vector<std::pair<std::string, std::string>> arms = {
      {"float", "float"},
      {"uniform", "uniform"},
      {"uniform_first_last_8", "uniform, first/last 8-bit"},
      {"sensitivity", "sensitivity + exact"},
      {"qss_only", "QSS only"},
      {"qss_exact", "QSS + exact allocation (default)"},
      {"qss_qpl", "QSS + QPL"},
      {"qss_qpl_min1", "QSS + QPL, min_bits 1"},
      {"qss_exact_min1", "QSS + exact allocation, min_bits 1"}};
  absl::StrAppend(&md, "| model | avg bits |");
  for (const auto& a : arms) absl::StrAppend(&md, " ", a.second, " |");
  absl::StrAppend(&md, " default - best baseline |\n|---|---|");
  for (size_t i = 0; i <= arms.size(); ++i) absl::StrAppend(&md, "---|");
  absl::StrAppend(&md, "\n");
  for (const auto& m : models) {
    for (int b : budgets) {
      absl::StrAppend(&md, "| ", m, " | ", b, " |");
      for (const auto& a : arms) {
        // Float does not depend on the budget: it ran with the first budget of each seed.
        std::string cell = Cell(res, m, a.first == "float" ? budgets.front() : b, a.first, true);
        if ((a.first == "qss_qpl_min1" || a.first == "qss_exact_min1") && cell == "-") cell = "";
        absl::StrAppend(&md, " ", cell, " |");
      }
      double best = -1;
      for (const char* base : {"uniform", "uniform_first_last_8", "sensitivity"}) {
        std::vector<double> acc;
        for (const Row& r : res.Select(m, b, base)) acc.push_back(r.accuracy);
        if (!acc.empty()) best = std::max(best, Median(acc));
      }
      std::vector<double> def;
      for (const Row& r : res.Select(m, b, "qss_exact")) def.push_back(r.accuracy);
      if (best >= 0 && !def.empty()) {
        absl::StrAppend(&md, absl::StrFormat(" %+.2f |\n", Median(def) - best));
      } else {
        absl::StrAppend(&md, " - |\n");
      }
    }
  }
  // QSS settings: accuracy and time, QSS epoch and whole search against float training.
  absl::StrAppend(&md,
                  "\nQSS settings at average 3 bits (same epochs): accuracy, QSS epoch / float epoch, whole search "
                  "(QSS + QPL or allocation + fine-tune + test) / float training of the same epochs (+ test), medians.\n\n"
                  "| model | setting | accuracy | QSS s | QSS / float epoch | search s | search / float |\n"
                  "|---|---|---|---|---|---|---|\n");
  for (const auto& m : models) {
    // The float arm trains for the same epochs in the first budget's job of each seed.
    std::vector<double> float_s;
    for (const Row& r : res.Select(m, budgets.front(), "float")) float_s.push_back(r.seconds);
    if (float_s.empty()) continue;
    const double fl = Median(float_s);
    const Preset p = PresetFor(m, quick);
    const int epochs = p.qss + p.qpl + p.finetune;
    for (const auto& [arm, label] : std::vector<std::pair<std::string, std::string>>{
             {"bilevel_every1", "bilevel, logits every step"},
             {"bilevel_every4", "bilevel, logits every 4 steps"},
             {"qss_qpl", "joint (default), then QPL"},
             {"qss_exact", "joint (default), then exact allocation (default pipeline)"}}) {
      std::vector<double> acc, qss, all;
      for (const Row& r : res.Select(m, 3, arm)) {
        acc.push_back(r.accuracy);
        all.push_back(r.seconds);
      }
      for (const Row& r : res.Select(m, 3, arm + ":qss")) qss.push_back(r.seconds);
      if (acc.empty()) continue;
      const double q = Median(qss), a = Median(all);
      absl::StrAppend(&md, absl::StrFormat("| %s | %s | %.2f | %.1f | %.2fx | %.1f | %.2fx |\n", m, label,
                                           Median(acc), q, qss.empty() ? 0.0 : q / (fl / epochs), a, a / fl));
    }
    absl::StrAppend(&md, absl::StrFormat("| %s | float training, %d epochs | %s | | | %.1f | 1.00x |\n", m, epochs,
                                         Cell(res, m, budgets.front(), "float", false), fl));
  }
  return md;
}

std::vector<int> Ints(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int v;
    if (absl::SimpleAtoi(p, &v)) out.push_back(v);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  qsearch::KeepFreedTensorMemory();  // as qsearch-worker does
  std::string path = "allocation_bench.tsv";
  std::vector<std::string> models = {"lenet5", "resnet20", "mobilenetv2_tiny"};
  std::vector<int> budgets = {2, 3, 4}, seeds = {1, 2, 3};
  bool variants = true, quick = false;
  std::vector<std::string> only;  // --only: just these variant arms, without the baselines' job
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--results" && has_value) {
      path = argv[++i];
    } else if (a == "--models" && has_value) {
      models = absl::StrSplit(argv[++i], ',', absl::SkipEmpty());
    } else if (a == "--budgets" && has_value) {
      budgets = Ints(argv[++i]);
    } else if (a == "--seeds" && has_value) {
      seeds = Ints(argv[++i]);
    } else if (a == "--no-variants") {
      variants = false;
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--only" && has_value) {
      only = absl::StrSplit(argv[++i], ',', absl::SkipEmpty());
      for (const auto& arm : only) {
        if (!std::set<std::string>{"qss_only", "qss_exact", "qss_exact_min1", "qss_qpl_min1", "bilevel_every1",
                                   "bilevel_every4"}
                 .count(arm)) {
          std::fprintf(stderr, "--only: no variant arm '%s'\n", arm.c_str());
          return 2;
        }
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--results FILE] [--models a,b] [--budgets 2,3,4] [--seeds 1,2,3] [--no-variants] "
                   "[--quick] [--only arm,arm]\n",
                   argv[0]);
      return 2;
    }
  }
  if (budgets.empty() || seeds.empty() || models.empty()) {
    std::fprintf(stderr, "empty --models, --budgets or --seeds\n");
    return 2;
  }
  Results results(path);
  Runner runner(&results, quick);
  for (const auto& m : models) {
    for (int seed : seeds) {
      for (int b : budgets) {
        std::printf("%s, average %d bits, seed %d\n", m.c_str(), b, seed);
        if (!only.empty()) {
          for (const auto& arm : only) runner.Variant(m, b, seed, arm);
          continue;
        }
        runner.Main(m, b, seed, b == budgets.front());
        runner.Variant(m, b, seed, "qss_only");
        runner.Variant(m, b, seed, "qss_exact");
        if (b == 2) runner.Variant(m, b, seed, "qss_qpl_min1");
      }
      if (variants && only.empty() && std::find(budgets.begin(), budgets.end(), 3) != budgets.end()) {
        for (const char* arm : {"bilevel_every1", "bilevel_every4"}) {
          runner.Variant(m, 3, seed, arm);
        }
      }
      const std::string md = Tables(results, models, budgets, quick);
      std::ofstream(path + ".md") << md;
    }
  }
  const std::string md = Tables(results, models, budgets, quick);
  std::ofstream(path + ".md") << md;
  std::printf("\n%s", md.c_str());
  return runner.failures_ > 0 ? 1 : 0;
}
