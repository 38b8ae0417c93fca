// The HTML job report: what it states (values from the job, escaping, no external
// assets), and what a real browser draws from it (one weight and one activation bar per
// layer, heights proportional to bits, one colour per scheme, one curve per phase).
#include "client/report.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/client/browser_check.h"
#include "tests/test_util.h"

namespace qsearch::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;
using ::qsearch::testing::FreshDir;

v1::LayerPolicy Layer(const std::string& name, const std::string& w_scheme, double w_bits, const std::string& a_scheme,
                      double a_bits, bool excluded = false) {
  v1::LayerPolicy l;
  l.set_name(name);
  l.set_kind("conv2d");
  l.mutable_weight()->set_scheme(w_scheme);
  l.mutable_weight()->set_spec(w_scheme + ":bits=" + std::to_string(static_cast<int>(w_bits)));
  l.mutable_activation()->set_scheme(a_scheme);
  l.mutable_activation()->set_spec(a_scheme + ":bits=" + std::to_string(static_cast<int>(a_bits)));
  l.set_weight_bits(w_bits);
  l.set_activation_bits(a_bits);
  l.set_params(1000);
  l.set_macs(50000);
  l.set_excluded(excluded);
  return l;
}

v1::Policy FourLayerPolicy() {
  v1::Policy p;
  p.set_model("toy");
  *p.add_layers() = Layer("stem", "uniform", 8, "uniform_act", 8, /*excluded=*/true);
  *p.add_layers() = Layer("block<1>&\"x\"", "esb", 3, "pact", 4);
  *p.add_layers() = Layer("block2", "ul2q", 2, "pact", 4);
  *p.add_layers() = Layer("head", "pot", 5, "lsq_act", 3);
  p.mutable_budget()->set_average_weight_bits(3.5);
  p.mutable_budget()->set_bitops(1e6);
  p.mutable_cost()->set_average_weight_bits(3.333);
  p.mutable_cost()->set_bitops(1.2e6);  // over: the report must say so
  p.mutable_cost()->set_model_size_bits(10000);
  return p;
}

std::vector<v1::JobEvent> Events() {
  std::vector<v1::JobEvent> events;
  std::int64_t step = 0;
  const std::pair<v1::Phase, int> phases[] = {
      {v1::PHASE_PRETRAIN, 3}, {v1::PHASE_QSS, 2}, {v1::PHASE_QPL, 2}, {v1::PHASE_FINETUNE, 1}};
  for (const auto& [phase, epochs] : phases) {
    for (int e = 0; e < epochs; ++e) {
      v1::JobEvent ev;
      ev.set_sequence(static_cast<std::int64_t>(events.size()) + 1);
      ev.set_phase(phase);
      ev.set_epoch(e);
      step += 100;
      ev.set_step(step);
      ev.set_loss(1.0 / (events.size() + 1));
      ev.set_accuracy(70 + events.size());
      ev.set_epoch_end(true);
      events.push_back(ev);
      v1::JobEvent progress = ev;  // mid-epoch progress: not a curve point
      progress.set_sequence(ev.sequence() + 1000);
      progress.set_epoch_end(false);
      events.push_back(progress);
    }
  }
  return events;
}

v1::SearchJob SucceededJob() {
  v1::SearchJob job;
  job.set_name("jobs/abc123");
  job.set_state(v1::SUCCEEDED);
  job.mutable_spec()->set_model("resnet20");
  job.mutable_spec()->mutable_dataset()->set_kind("fashion_mnist");
  job.mutable_spec()->mutable_dataset()->set_train_size(5000);
  auto* r = job.mutable_result();
  *r->mutable_policy() = FourLayerPolicy();
  r->set_quantized_accuracy(86.25);
  r->set_float_accuracy(84.5);
  r->set_float_baseline_accuracy(87.5);
  r->set_uniform_accuracy(85.75);
  r->set_uniform_weight_bits(3);
  (*r->mutable_phase_seconds())["qss"] = 12.5;
  (*r->mutable_phase_seconds())["pretrain"] = 7.25;
  return job;
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(ReportTest, StatesTheJobsFiguresAndIsSelfContained) {
  const std::string html = RenderReport(SucceededJob(), Events());
  EXPECT_THAT(html, HasSubstr("<title>qsearch report: jobs/abc123</title>"));
  EXPECT_EQ(Count(html, "class=\"bar weight\""), 4);
  EXPECT_EQ(Count(html, "class=\"bar activation\""), 4);
  EXPECT_THAT(html, HasSubstr("data-kind=\"quantized\" data-value=\"86.25\""));
  EXPECT_THAT(html, HasSubstr("data-kind=\"uniform\" data-value=\"85.75\""));
  EXPECT_THAT(html, HasSubstr("data-kind=\"float_baseline\" data-value=\"87.50\""));
  EXPECT_THAT(html, HasSubstr("data-kind=\"float_pretrained\" data-value=\"84.50\""));
  EXPECT_THAT(html, HasSubstr("<b>-1.25</b> points"));  // quantized - float, same schedule
  EXPECT_THAT(html, HasSubstr("<b>+0.50</b> points"));  // mixed - uniform
  // Budget: average bits hold (95.2%), BitOPs do not (120%).
  EXPECT_THAT(html, HasSubstr("data-dimension=\"average_weight_bits\" data-used=\"0.9523\""));
  EXPECT_THAT(html, HasSubstr("data-dimension=\"bitops\" data-used=\"1.2000\""));
  EXPECT_THAT(html, HasSubstr("over budget"));
  // One curve per phase that finished epochs; mid-epoch events are not points.
  EXPECT_THAT(html, HasSubstr("data-phase=\"PHASE_PRETRAIN\" data-points=\"3\""));
  EXPECT_THAT(html, HasSubstr("data-phase=\"PHASE_QSS\" data-points=\"2\""));
  EXPECT_THAT(html, HasSubstr("data-phase=\"PHASE_FINETUNE\" data-points=\"1\""));
  EXPECT_EQ(Count(html, "class=\"curve\""), 2 * 4);  // loss and accuracy charts
  EXPECT_THAT(html, HasSubstr("<td class=\"l\">qss</td><td>12.5</td>"));
  // The layer named with markup characters is escaped everywhere it appears.
  EXPECT_THAT(html, Not(HasSubstr("block<1>")));
  EXPECT_THAT(html, HasSubstr("block&lt;1&gt;&amp;&quot;x&quot;"));
  // Nothing outside the file: no scripts, links, images or URLs.
  EXPECT_THAT(html, Not(HasSubstr("id=\"warnings\"")));  // the job warned about nothing
  for (const char* banned : {"<script", "<link", "<img", "src=", "http://", "https://", "@import"}) {
    EXPECT_THAT(html, Not(HasSubstr(banned))) << banned;
  }
}

TEST(ReportTest, EveryBaselineAndEachLayersSensitivityAreShown) {
  v1::SearchJob job = SucceededJob();
  auto* r = job.mutable_result();
  const std::pair<const char*, double> baselines[] = {
      {"float", 87.5}, {"uniform", 85.75}, {"uniform_first_last_8", 85.5}, {"sensitivity", 86.5}};
  for (const auto& [name, acc] : baselines) {
    v1::BaselineResult* b = r->add_baselines();
    b->set_name(name);
    b->set_accuracy(acc);
    if (std::string(name) != "float") b->mutable_policy()->mutable_cost()->set_average_weight_bits(2.875);
  }
  r->mutable_policy()->mutable_layers(1)->set_sensitivity(0.00123);
  std::vector<v1::JobEvent> events = Events();
  v1::JobEvent fl8;
  fl8.set_sequence(99);
  fl8.set_phase(v1::PHASE_BASELINE_FIRST_LAST_8);
  fl8.set_step(2000);
  fl8.set_loss(0.5);
  fl8.set_accuracy(85);
  fl8.set_epoch_end(true);
  events.push_back(fl8);
  const std::string html = RenderReport(job, events);
  EXPECT_THAT(html, HasSubstr("data-kind=\"float_baseline\" data-value=\"87.50\""));
  EXPECT_THAT(html, HasSubstr("data-kind=\"uniform\" data-value=\"85.75\""));
  EXPECT_THAT(html, HasSubstr("data-kind=\"uniform_first_last_8\" data-value=\"85.50\""));
  EXPECT_THAT(html, HasSubstr("data-kind=\"sensitivity\" data-value=\"86.50\""));
  EXPECT_THAT(html, HasSubstr("first/last 8-bit, rest uniform (2.875 avg)"));
  // 86.25 against the best quantized baseline, sensitivity at 86.50.
  EXPECT_THAT(html, HasSubstr("best quantized baseline (sensitivity): <b>-0.25</b> points"));
  EXPECT_EQ(Count(html, "<td class=\"sensitivity\">"), 3);  // quantized layers; the float one has none
  EXPECT_THAT(html, HasSubstr("<td class=\"sensitivity\">0.00123</td>"));
  EXPECT_THAT(html, HasSubstr("uniform, first/last 8-bit baseline"));  // the phase's curve label
  EXPECT_THAT(html, Not(HasSubstr("PHASE_BASELINE_FIRST_LAST_8<")));
}

TEST(ReportTest, WarningsAndWhyALayerStaysFloatAreShown) {
  v1::SearchJob job = SucceededJob();
  job.mutable_result()->mutable_policy()->mutable_layers(0)->set_note("first layer (exclude_first)");
  std::vector<v1::JobEvent> events = Events();
  v1::JobEvent warning;
  warning.set_phase(v1::PHASE_LOADING);
  warning.set_warning(true);
  warning.set_message("warning: the model was traced in eval mode <bn>");
  events.insert(events.begin(), warning);
  const std::string html = RenderReport(job, events);
  EXPECT_THAT(html, HasSubstr("<ul class=\"warning\" id=\"warnings\"><li>warning: the model was traced in eval mode "
                              "&lt;bn&gt;</li></ul>"));
  EXPECT_THAT(html, HasSubstr("float: first layer (exclude_first)"));
}

TEST(ReportTest, RunningJobShowsItsLatestPolicyAndNoFinalAccuracies) {
  v1::SearchJob job;
  job.set_name("jobs/running");
  job.set_state(v1::RUNNING);
  std::vector<v1::JobEvent> events = Events();
  v1::Policy early = FourLayerPolicy();
  early.mutable_layers(2)->set_weight_bits(6);
  *events[4].mutable_policy() = early;  // older
  v1::Policy latest = FourLayerPolicy();
  latest.mutable_layers(2)->set_weight_bits(4);
  *events[8].mutable_policy() = latest;
  *job.mutable_last_event() = events.back();
  const v1::Policy* shown = ReportedPolicy(job, events);
  ASSERT_NE(shown, nullptr);
  EXPECT_EQ(shown->layers(2).weight_bits(), 4);
  const std::string html = RenderReport(job, events);
  EXPECT_THAT(html, HasSubstr("has not finished"));
  EXPECT_THAT(html, HasSubstr("No accuracy measured yet"));
  EXPECT_THAT(html, HasSubstr("data-layer=\"block2\" data-bits=\"4\""));

  v1::SearchJob failed = job;
  failed.set_state(v1::FAILED);
  failed.set_error_message("worker killed by signal 9 <oom?>");
  const std::string failed_html = RenderReport(failed, events);
  EXPECT_THAT(failed_html, HasSubstr("<p class=\"error\">worker killed by signal 9 &lt;oom?&gt;</p>"));
  EXPECT_THAT(failed_html, HasSubstr("state <b id=\"state\">FAILED</b>"));

  v1::SearchJob queued;
  queued.set_name("jobs/queued");
  queued.set_state(v1::QUEUED);
  EXPECT_EQ(ReportedPolicy(queued, {}), nullptr);
  const std::string empty = RenderReport(queued, {});
  EXPECT_THAT(empty, HasSubstr("No policy yet"));
  EXPECT_THAT(empty, HasSubstr("No epoch has finished yet"));
  EXPECT_EQ(Count(empty, "class=\"bar"), 0);
}

TEST(ReportTest, ChromiumDrawsOneBarPerLayerProportionalToBitsColouredByScheme) {
  const std::string dir = FreshDir("report_browser");
  const std::string path = dir + "/report.html";
  const v1::SearchJob job = SucceededJob();
  std::ofstream(path) << RenderReport(job, Events());
  ASSERT_OK_AND_ASSIGN(testing::RenderedReport r, testing::RenderInChromium(path, dir + "/chromium"));

  EXPECT_EQ(r.title, "qsearch report: jobs/abc123");
  EXPECT_EQ(r.external_resources, 0);
  EXPECT_EQ(r.screenshot_width, 1200);
  EXPECT_EQ(r.screenshot_height, 2400);
  const v1::Policy& p = job.result().policy();
  ASSERT_EQ(r.bars.size(), 2u * p.layers_size());
  std::map<std::string, std::string> fill_of_scheme;
  double px_per_bit = 0;
  for (const auto& l : p.layers()) {
    for (const char* part : {"weight", "activation"}) {
      int found = 0;
      for (const auto& b : r.bars) {
        if (b.layer != l.name() || b.part != part) continue;
        ++found;
        EXPECT_GT(b.width, 5) << l.name();
        EXPECT_GT(b.height, 5) << l.name();
        if (l.excluded()) {
          EXPECT_EQ(b.scheme, "float");
          EXPECT_THAT(b.fill, HasSubstr("url(")) << "float layers are hatched";
          continue;
        }
        const bool weight = std::string(part) == "weight";
        EXPECT_EQ(b.bits, weight ? l.weight_bits() : l.activation_bits());
        EXPECT_EQ(b.scheme, weight ? l.weight().scheme() : l.activation().scheme());
        // The drawn height is the same number of pixels per bit for every bar.
        if (px_per_bit == 0) px_per_bit = b.height / b.bits;
        EXPECT_NEAR(b.height / b.bits, px_per_bit, 0.02 * px_per_bit) << l.name() << " " << part;
        auto [it, fresh] = fill_of_scheme.emplace(b.scheme, b.fill);
        if (!fresh) EXPECT_EQ(it->second, b.fill) << "one colour per scheme: " << b.scheme;
      }
      EXPECT_EQ(found, 1) << l.name() << " " << part;
    }
  }
  std::set<std::string> fills;
  for (const auto& [_, fill] : fill_of_scheme) fills.insert(fill);
  EXPECT_EQ(fills.size(), fill_of_scheme.size()) << "schemes get distinct colours";
  EXPECT_EQ(fill_of_scheme.size(), 5u);  // esb, ul2q, pot; pact, lsq_act (the float stem has none)
  ASSERT_EQ(r.curves.size(), 8u);
  for (const auto& c : r.curves) {
    if (c.points > 1) EXPECT_GT(c.width, 10) << c.phase;
  }
}

}  // namespace
}  // namespace qsearch::client
