#include "client/report.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"

namespace qsearch::client {
namespace {

// Schemes keep their colour from report to report; unknown ones hash into the rest.
const std::map<std::string, std::string>& SchemeColours() {
  static const auto* m = new std::map<std::string, std::string>{
      {"uniform", "#4e79a7"}, {"lsq", "#f28e2b"},     {"dorefa", "#59a14f"},     {"binary", "#7f7f7f"},
      {"ternary", "#b07aa1"}, {"residual", "#9c755f"}, {"pot", "#edc948"},       {"vecq", "#76b7b2"},
      {"ul2q", "#e15759"},    {"esb", "#ff9da7"},      {"uniform_act", "#17becf"}, {"pact", "#8cd17d"},
      {"lsq_act", "#a0522d"}, {"dorefa_act", "#bcbd22"}};
  return *m;
}

std::string SchemeColour(const std::string& scheme) {
  static const char* kSpare[] = {"#d62728", "#9467bd", "#8c564b", "#e377c2", "#1f77b4", "#7f7f00"};
  auto it = SchemeColours().find(scheme);
  if (it != SchemeColours().end()) return it->second;
  return kSpare[std::hash<std::string>{}(scheme) % (sizeof(kSpare) / sizeof(kSpare[0]))];
}

std::string PhaseColour(v1::Phase p) {
  switch (p) {
    case v1::PHASE_PRETRAIN: return "#4e79a7";
    case v1::PHASE_QSS: return "#f28e2b";
    case v1::PHASE_QPL: return "#e15759";
    case v1::PHASE_FINETUNE: return "#59a14f";
    case v1::PHASE_FLOAT_BASELINE: return "#7f7f7f";
    case v1::PHASE_BASELINE: return "#b07aa1";
    case v1::PHASE_BASELINE_FIRST_LAST_8: return "#9c755f";
    case v1::PHASE_BASELINE_SENSITIVITY: return "#76b7b2";
    case v1::PHASE_ALLOCATE: return "#edc948";
    default: return "#333333";
  }
}

std::string PhaseLabel(v1::Phase p) {
  switch (p) {
    case v1::PHASE_PRETRAIN: return "pre-training (float)";
    case v1::PHASE_QSS: return "scheme search (QSS)";
    case v1::PHASE_QPL: return "precision learning (QPL)";
    case v1::PHASE_FINETUNE: return "fine-tuning";
    case v1::PHASE_FLOAT_BASELINE: return "float baseline";
    case v1::PHASE_BASELINE: return "uniform baseline";
    case v1::PHASE_BASELINE_FIRST_LAST_8: return "uniform, first/last 8-bit baseline";
    case v1::PHASE_BASELINE_SENSITIVITY: return "sensitivity baseline";
    case v1::PHASE_ALLOCATE: return "sensitivity allocation";
    default: return v1::Phase_Name(p);
  }
}

std::string Escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string Num(double v) { return absl::StrFormat("%.1f", v); }

// Readable magnitudes for bits: 1234567 -> "1.23 Mbit".
std::string Bits(double bits) {
  if (bits >= 8e6) return absl::StrFormat("%.2f MiB", bits / 8 / 1024 / 1024);
  if (bits >= 8e3) return absl::StrFormat("%.1f KiB", bits / 8 / 1024);
  return absl::StrFormat("%.0f bits", bits);
}

std::string Count(double v) {
  if (v >= 1e9) return absl::StrFormat("%.3g G", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.3g M", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.3g k", v / 1e3);
  return absl::StrFormat("%.3g", v);
}

std::string Time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixSeconds(t.seconds()), absl::UTCTimeZone());
}

// A "nice" axis top: the smallest of 1, 2, 5 x 10^k at or above v.
double NiceCeil(double v) {
  if (v <= 0) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= v * (1 - 1e-9)) return m * p;
  }
  return 10 * p;
}

constexpr char kStyle[] = R"(
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px}.error{color:#b00020}.warning{color:#8a5300}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}td.spec{text-align:left;overflow-wrap:anywhere;max-width:320px}.ok{color:#1b7f3b}.bad{color:#b00020}
svg text{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif}
.legend span{display:inline-block;margin-right:14px;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.note{color:#555;font-size:12px}.scroll{overflow-x:auto}
)";

// Horizontal bars for the accuracies the run measured.
std::string AccuracySection(const v1::SearchJob& job, const v1::Policy* policy) {
  const v1::JobResult& r = job.result();
  struct Row {
    std::string id, label;
    double value;
    std::string colour;
  };
  std::vector<Row> rows;
  if (job.state() == v1::SUCCEEDED) {
    rows.push_back({"quantized", absl::StrFormat("mixed precision, %.3f avg weight bits", policy ? policy->cost().average_weight_bits() : 0),
                    r.quantized_accuracy(), "#e15759"});
    // Every baseline that ran, each on the same schedule as the searched policy.
    for (const v1::BaselineResult& b : r.baselines()) {
      const double bits = b.policy().cost().average_weight_bits();
      if (b.name() == "float") {
        rows.push_back({"float_baseline", "float, same schedule", b.accuracy(), PhaseColour(v1::PHASE_FLOAT_BASELINE)});
      } else if (b.name() == "uniform") {
        rows.push_back({"uniform", absl::StrFormat("uniform %g-bit, same schedule", r.uniform_weight_bits()),
                        b.accuracy(), PhaseColour(v1::PHASE_BASELINE)});
      } else if (b.name() == "uniform_first_last_8") {
        rows.push_back({b.name(), absl::StrFormat("first/last 8-bit, rest uniform (%.3f avg)", bits), b.accuracy(),
                        PhaseColour(v1::PHASE_BASELINE_FIRST_LAST_8)});
      } else {
        rows.push_back({b.name(), absl::StrFormat("sensitivity + exact solver (%.3f avg)", bits), b.accuracy(),
                        PhaseColour(v1::PHASE_BASELINE_SENSITIVITY)});
      }
    }
    // A result stored before baselines were a list has only the two fixed fields.
    if (r.baselines_size() == 0 && r.uniform_accuracy() > 0) {
      rows.push_back({"uniform", absl::StrFormat("uniform %g-bit, same schedule", r.uniform_weight_bits()),
                      r.uniform_accuracy(), "#b07aa1"});
    }
    if (r.baselines_size() == 0 && r.float_baseline_accuracy() > 0) {
      rows.push_back({"float_baseline", "float, same schedule", r.float_baseline_accuracy(), "#7f7f7f"});
    }
  }
  if (r.float_accuracy() > 0) rows.push_back({"float_pretrained", "float after pre-training", r.float_accuracy(), "#4e79a7"});
  std::string out = "<h2 id=\"accuracy\">Test accuracy</h2>\n";
  if (rows.empty()) return out + "<p class=\"note\">No accuracy measured yet.</p>\n";
  const double width = 520, label_w = 300, row_h = 26;
  out += absl::StrFormat("<svg id=\"accuracy-chart\" width=\"%.0f\" height=\"%.0f\" role=\"img\">\n", label_w + width + 70,
                         rows.size() * row_h + 24);
  for (double t = 0; t <= 100; t += 20) {
    const double x = label_w + width * t / 100;
    out += absl::StrFormat("<line x1=\"%.1f\" y1=\"0\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#e4e4e4\"/>"
                           "<text x=\"%.1f\" y=\"%.0f\" font-size=\"11\" text-anchor=\"middle\" fill=\"#666\">%g%%</text>\n",
                           x, x, rows.size() * row_h, x, rows.size() * row_h + 16, t);
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& row = rows[i];
    const double y = i * row_h + 4;
    out += absl::StrFormat(
        "<text x=\"%.0f\" y=\"%.1f\" font-size=\"13\" text-anchor=\"end\">%s</text>"
        "<rect class=\"acc\" data-kind=\"%s\" data-value=\"%.2f\" x=\"%.0f\" y=\"%.1f\" width=\"%.1f\" height=\"%.0f\" fill=\"%s\">"
        "<title>%s: %.2f%%</title></rect>"
        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">%.2f%%</text>\n",
        label_w - 8, y + 13, Escape(row.label), row.id, row.value, label_w, y, width * std::clamp(row.value, 0.0, 100.0) / 100,
        row_h - 8, row.colour, Escape(row.label), row.value, label_w + width * std::clamp(row.value, 0.0, 100.0) / 100 + 4,
        y + 13, row.value);
  }
  out += "</svg>\n";
  if (job.state() == v1::SUCCEEDED && r.float_baseline_accuracy() > 0) {
    out += absl::StrFormat("<p>Quantized minus float (same schedule): <b>%+.2f</b> points.", r.quantized_accuracy() - r.float_baseline_accuracy());
    if (r.uniform_accuracy() > 0) {
      out += absl::StrFormat(" Mixed minus uniform %g-bit: <b>%+.2f</b> points.", r.uniform_weight_bits(),
                             r.quantized_accuracy() - r.uniform_accuracy());
    }
    out += "</p>\n";
  }
  // Against the best quantized baseline, the comparison that matters to a user.
  const v1::BaselineResult* best = nullptr;
  for (const v1::BaselineResult& b : r.baselines()) {
    if (b.name() != "float" && (best == nullptr || b.accuracy() > best->accuracy())) best = &b;
  }
  if (job.state() == v1::SUCCEEDED && best != nullptr) {
    out += absl::StrFormat("<p id=\"best-baseline\">Searched policy minus the best quantized baseline (%s): "
                           "<b>%+.2f</b> points.</p>\n",
                           Escape(best->name()), r.quantized_accuracy() - best->accuracy());
  }
  return out;
}

// One row per limited budget dimension: the limit, the policy's cost, and a bar of
// cost / limit with the limit drawn at 100%.
std::string BudgetSection(const v1::Policy& p) {
  struct Dim {
    std::string id, label;
    double limit, cost;
    std::function<std::string(double)> fmt;
  };
  const auto avg = [](double v) { return absl::StrFormat("%.3f bits", v); };
  std::vector<Dim> dims = {
      {"model_size_bits", "model size", p.budget().model_size_bits(), p.cost().model_size_bits(), Bits},
      {"average_weight_bits", "average weight bits", p.budget().average_weight_bits(), p.cost().average_weight_bits(), avg},
      {"bitops", "BitOPs per sample", p.budget().bitops(), p.cost().bitops(), Count},
      {"activation_memory_bits",
       p.budget().activation_memory_peak() ? "activation memory (peak)" : "activation memory (sum)",
       p.budget().activation_memory_bits(), p.cost().activation_memory_bits(), Bits},
  };
  std::string out = "<h2 id=\"budget\">Budget vs achieved</h2>\n<table><tr><th class=\"l\">dimension</th><th>budget</th>"
                    "<th>achieved</th><th>used</th><th class=\"l\"></th></tr>\n";
  std::string bars;
  int shown = 0;
  for (const Dim& d : dims) {
    if (d.limit <= 0) {
      out += absl::StrFormat("<tr><td class=\"l\">%s</td><td>no limit</td><td>%s</td><td></td><td></td></tr>\n", d.label,
                             d.fmt(d.cost));
      continue;
    }
    const double used = d.cost / d.limit;
    const bool holds = d.cost <= d.limit * (1 + 1e-9);
    out += absl::StrFormat("<tr><td class=\"l\">%s</td><td>%s</td><td>%s</td><td>%.1f%%</td><td class=\"l %s\">%s</td></tr>\n",
                           d.label, d.fmt(d.limit), d.fmt(d.cost), 100 * used, holds ? "ok" : "bad",
                           holds ? "within budget" : "over budget");
    const double y = shown * 28 + 4, w = 400, x0 = 190;
    bars += absl::StrFormat(
        "<text x=\"%.0f\" y=\"%.1f\" font-size=\"13\" text-anchor=\"end\">%s</text>"
        "<rect x=\"%.0f\" y=\"%.1f\" width=\"%.0f\" height=\"18\" fill=\"#f0f0f0\"/>"
        "<rect class=\"budget\" data-dimension=\"%s\" data-used=\"%.4f\" x=\"%.0f\" y=\"%.1f\" width=\"%.1f\" height=\"18\" fill=\"%s\">"
        "<title>%s: %s of %s</title></rect>\n",
        x0 - 8, y + 13, d.label, x0, y, w / 1.25, d.id, used, x0, y, w / 1.25 * std::min(used, 1.25),
        holds ? "#59a14f" : "#e15759", d.label, d.fmt(d.cost), d.fmt(d.limit));
    ++shown;
  }
  out += "</table>\n";
  if (shown > 0) {
    const double x100 = 190 + 400 / 1.25 * 1.0;
    out += absl::StrFormat("<svg id=\"budget-chart\" width=\"640\" height=\"%d\" role=\"img\">\n%s"
                           "<line x1=\"%.0f\" y1=\"0\" x2=\"%.0f\" y2=\"%d\" stroke=\"#222\" stroke-dasharray=\"4 3\"/>"
                           "<text x=\"%.0f\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">budget</text></svg>\n",
                           shown * 28 + 20, bars, x100, x100, shown * 28, x100, shown * 28 + 14);
  }
  return out;
}

// Per layer, a weight bar and an activation bar; height = bits, fill = scheme. Layers kept
// in float get hatched bars at the top of the axis labelled "fp32".
std::string LayerSection(const v1::Policy& p) {
  double top = 8;
  for (const auto& l : p.layers()) {
    if (!l.excluded()) top = std::max({top, l.weight_bits(), l.activation_bits()});
  }
  top = std::ceil(top);
  const int n = p.layers_size();
  std::size_t longest = 1;
  for (const auto& l : p.layers()) longest = std::max(longest, l.name().size());
  const double left = 44, group = 46, bar = 16, plot_h = 220, top_pad = 14;
  const double label_h = 24 + 0.71 * 6.5 * static_cast<double>(std::min<std::size_t>(longest, 40));
  const double width = std::max(360.0, left + n * group + 20);
  std::string out = "<h2 id=\"layers\">Per-layer bit widths</h2>\n";
  // Wide models scroll inside their box rather than widen the page.
  out += "<div class=\"scroll\">";
  out += absl::StrFormat("<svg id=\"layer-chart\" width=\"%.0f\" height=\"%.0f\" role=\"img\">\n", width,
                         top_pad + plot_h + label_h);
  out += "<defs><pattern id=\"fp32\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">"
         "<rect width=\"6\" height=\"6\" fill=\"#eeeeee\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#999\" stroke-width=\"3\"/>"
         "</pattern></defs>\n";
  const double px_per_bit = plot_h / top;
  for (int b = 0; b <= top; ++b) {
    const double y = top_pad + plot_h - b * px_per_bit;
    out += absl::StrFormat("<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"%s\"/>"
                           "<text x=\"%.0f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\" fill=\"#666\">%d</text>\n",
                           left, y, width - 10, y, b == 0 ? "#888" : "#ececec", left - 6, y + 4, b);
  }
  out += absl::StrFormat("<text x=\"12\" y=\"%.0f\" font-size=\"12\" transform=\"rotate(-90 12 %.0f)\" "
                         "text-anchor=\"middle\">bits</text>\n",
                         top_pad + plot_h / 2, top_pad + plot_h / 2);
  std::set<std::string> schemes[2];  // weights, activations
  bool any_excluded = false;
  for (int i = 0; i < n; ++i) {
    const auto& l = p.layers(i);
    const double x = left + i * group + 6;
    const std::string name = Escape(l.name());
    struct Part {
      const char* cls;
      const char* what;
      double bits;
      std::string scheme;
      double offset;
    };
    const Part parts[] = {{"weight", "weights", l.weight_bits(), l.weight().scheme(), 0},
                          {"activation", "input activations", l.activation_bits(), l.activation().scheme(), bar + 2}};
    for (const Part& part : parts) {
      const double bx = x + part.offset;
      if (l.excluded()) {
        any_excluded = true;
        out += absl::StrFormat(
            "<rect class=\"bar %s\" data-layer=\"%s\" data-bits=\"32\" data-scheme=\"float\" x=\"%.1f\" y=\"%.1f\" "
            "width=\"%.0f\" height=\"%.1f\" fill=\"url(#fp32)\" stroke=\"#999\"><title>%s %s: float (not quantized)</title></rect>\n",
            part.cls, name, bx, top_pad, bar, plot_h, name, part.what);
        out += absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" text-anchor=\"middle\">fp32</text>\n",
                               bx + bar / 2, top_pad - 2);
        continue;
      }
      schemes[part.offset > 0 ? 1 : 0].insert(part.scheme);
      const double h = part.bits * px_per_bit;
      out += absl::StrFormat(
          "<rect class=\"bar %s\" data-layer=\"%s\" data-bits=\"%g\" data-scheme=\"%s\" x=\"%.1f\" y=\"%.2f\" width=\"%.0f\" "
          "height=\"%.2f\" fill=\"%s\"%s><title>%s %s: %s, %g bits</title></rect>\n",
          part.cls, name, part.bits, Escape(part.scheme), bx, top_pad + plot_h - h, bar, h, SchemeColour(part.scheme),
          part.offset > 0 ? " fill-opacity=\"0.75\" stroke=\"#333\" stroke-width=\"0.6\"" : "", name, part.what,
          Escape(part.scheme), part.bits);
      out += absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">%g</text>\n", bx + bar / 2,
                             top_pad + plot_h - h - 3, part.bits);
    }
    // Long module paths keep their tail, the part that tells layers apart.
    const std::string label = l.name().size() > 40 ? absl::StrCat("\u2026", l.name().substr(l.name().size() - 39)) : l.name();
    const double lx = x + bar + 1, ly = top_pad + plot_h + 12;
    out += absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\" transform=\"rotate(-45 %.1f %.1f)\">%s</text>\n",
                           lx, ly, lx, ly, Escape(label));
  }
  out += "</svg></div>\n";
  const char* kLegendTitle[] = {"weights (left bar)", "input activations (right bar, outlined)"};
  for (int part = 0; part < 2; ++part) {
    out += absl::StrFormat("<div class=\"legend\"><span>%s:</span>", kLegendTitle[part]);
    for (const std::string& s : schemes[part]) {
      out += absl::StrFormat("<span class=\"scheme\" data-scheme=\"%s\"><i style=\"background:%s\"></i>%s</span>", Escape(s),
                             SchemeColour(s), Escape(s));
    }
    if (any_excluded) out += "<span><i style=\"background:#ddd;border:1px solid #999\"></i>float (excluded)</span>";
    out += "</div>\n";
  }

  out += "<table id=\"layer-table\"><tr><th class=\"l\">layer</th><th class=\"l\">kind</th><th>params</th><th>MACs</th>"
         "<th class=\"l\">weight quantizer</th><th>w bits</th><th class=\"l\">activation quantizer</th><th>a bits</th>"
         "<th title=\"empirical Fisher: mean squared loss gradient per weight; higher = more loss per unit of "
         "squared weight error\">sensitivity</th></tr>\n";
  for (const auto& l : p.layers()) {
    if (l.excluded()) {
      // The reason it stays float (an op filter, a layer qsearch cannot quantize) in place
      // of the quantizer specs.
      out += absl::StrFormat("<tr><td class=\"l\">%s</td><td class=\"l\">%s</td><td>%d</td><td>%d</td>"
                             "<td class=\"l\">float</td><td>32</td><td class=\"l note\">%s</td><td>32</td><td></td></tr>\n",
                             Escape(l.name()), Escape(l.kind()), l.params(), l.macs(),
                             l.note().empty() ? "float" : Escape(absl::StrCat("float: ", l.note())));
    } else {
      out += absl::StrFormat("<tr><td class=\"l\">%s</td><td class=\"l\">%s</td><td>%d</td><td>%d</td>"
                             "<td class=\"spec\">%s</td><td>%g</td><td class=\"spec\">%s</td><td>%g</td>"
                             "<td class=\"sensitivity\">%s</td></tr>\n",
                             Escape(l.name()), Escape(l.kind()), l.params(), l.macs(), Escape(l.weight().spec()),
                             l.weight_bits(), Escape(l.activation().spec()), l.activation_bits(),
                             l.sensitivity() > 0 ? absl::StrFormat("%.3g", l.sensitivity()) : "");
    }
  }
  out += "</table>\n";
  return out;
}

// One line chart over training steps: a polyline and a dot per epoch for each phase.
std::string Chart(const std::string& id, const std::string& title, const std::vector<v1::JobEvent>& points,
                  const std::function<double(const v1::JobEvent&)>& value, bool percent) {
  const double left = 56, right = 16, top_pad = 24, plot_w = 760, plot_h = 200, bottom = 36;
  double x_max = 1, lo = 1e300, hi = 0;
  for (const auto& e : points) {
    x_max = std::max<double>(x_max, e.step());
    lo = std::min(lo, value(e));
    hi = std::max(hi, value(e));
  }
  // Ticks on a 1-2-5 step; accuracy zooms on the range the run covers, loss starts at 0.
  double y_min = 0, step = NiceCeil(std::max(hi, 1e-6) / 5);
  if (percent) {
    step = NiceCeil(std::max(hi - lo, 5.0) / 5);
    y_min = std::max(0.0, std::floor((lo - step / 2) / step) * step);
  }
  double y_max = std::max(y_min + step, std::ceil(hi / step - 1e-9) * step);
  if (percent) y_max = std::min(100.0, y_max);
  const int ticks = static_cast<int>(std::lround((y_max - y_min) / step));
  const auto sx = [&](double s) { return left + plot_w * s / x_max; };
  const auto sy = [&](double v) { return top_pad + plot_h - plot_h * (v - y_min) / std::max(1e-12, y_max - y_min); };
  std::string out = absl::StrFormat("<svg id=\"%s\" width=\"%.0f\" height=\"%.0f\" role=\"img\">\n"
                                    "<text x=\"%.0f\" y=\"15\" font-size=\"13\" font-weight=\"bold\">%s</text>\n",
                                    id, left + plot_w + right, top_pad + plot_h + bottom, left, Escape(title));
  for (int t = 0; t <= ticks; ++t) {
    const double v = y_min + step * t, y = sy(v);
    out += absl::StrFormat("<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"%s\"/>"
                           "<text x=\"%.0f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\" fill=\"#666\">%s</text>\n",
                           left, y, left + plot_w, y, t == 0 ? "#888" : "#ececec", left - 6, y + 4,
                           percent ? absl::StrFormat("%g%%", v) : absl::StrFormat("%.3g", v));
  }
  for (int t = 0; t <= 4; ++t) {
    const double s = x_max * t / 4;
    out += absl::StrFormat("<text x=\"%.1f\" y=\"%.0f\" font-size=\"11\" text-anchor=\"middle\" fill=\"#666\">%s</text>\n",
                           sx(s), top_pad + plot_h + 16, Count(std::round(s)));
  }
  out += absl::StrFormat("<text x=\"%.0f\" y=\"%.0f\" font-size=\"12\" text-anchor=\"middle\">training step</text>\n",
                         left + plot_w / 2, top_pad + plot_h + 32);
  // Phases in the order they ran.
  std::vector<v1::Phase> order;
  std::map<v1::Phase, std::vector<const v1::JobEvent*>> by_phase;
  for (const auto& e : points) {
    if (by_phase.find(e.phase()) == by_phase.end()) order.push_back(e.phase());
    by_phase[e.phase()].push_back(&e);
  }
  for (v1::Phase ph : order) {
    const auto& pts = by_phase[ph];
    std::vector<std::string> xy;
    for (const auto* e : pts) xy.push_back(absl::StrFormat("%.1f,%.1f", sx(e->step()), sy(value(*e))));
    out += absl::StrFormat("<polyline class=\"curve\" data-phase=\"%s\" data-points=\"%d\" points=\"%s\" fill=\"none\" "
                           "stroke=\"%s\" stroke-width=\"2\"/>\n",
                           v1::Phase_Name(ph), pts.size(), absl::StrJoin(xy, " "), PhaseColour(ph));
    for (const auto* e : pts) {
      out += absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"><title>%s epoch %d: %s</title></circle>\n",
                             sx(e->step()), sy(value(*e)), PhaseColour(ph), PhaseLabel(ph), e->epoch() + 1,
                             percent ? absl::StrFormat("%.2f%%", value(*e)) : absl::StrFormat("%.4f", value(*e)));
    }
  }
  out += "</svg>\n";
  return out;
}

std::string CurvesSection(const std::vector<v1::JobEvent>& events) {
  std::vector<v1::JobEvent> points;
  for (const auto& e : events) {
    if (e.epoch_end()) points.push_back(e);
  }
  std::string out = "<h2 id=\"curves\">Training curves</h2>\n";
  if (points.empty()) return out + "<p class=\"note\">No epoch has finished yet.</p>\n";
  out += Chart("loss-chart", "training loss (mean over the epoch)", points, [](const v1::JobEvent& e) { return e.loss(); }, false);
  out += Chart("accuracy-curve", "validation accuracy after each epoch", points,
               [](const v1::JobEvent& e) { return e.accuracy(); }, true);
  std::set<v1::Phase> seen;
  out += "<div class=\"legend\">";
  for (const auto& e : points) {
    if (!seen.insert(e.phase()).second) continue;
    out += absl::StrFormat("<span><i style=\"background:%s\"></i>%s</span>", PhaseColour(e.phase()), PhaseLabel(e.phase()));
  }
  out += "</div>\n<p class=\"note\">Baselines train after the search; their steps continue the same counter.</p>\n";
  return out;
}

std::string TimesSection(const v1::JobResult& r) {
  if (r.phase_seconds().empty()) return "";
  std::vector<std::pair<std::string, double>> rows(r.phase_seconds().begin(), r.phase_seconds().end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  double total = 0;
  for (const auto& [_, s] : rows) total += s;
  std::string out = "<h2 id=\"times\">Wall time per phase</h2>\n<table><tr><th class=\"l\">phase</th><th>seconds</th><th>share</th></tr>\n";
  for (const auto& [name, s] : rows) {
    out += absl::StrFormat("<tr><td class=\"l\">%s</td><td>%.1f</td><td>%.0f%%</td></tr>\n", Escape(name), s,
                           total > 0 ? 100 * s / total : 0);
  }
  out += absl::StrFormat("<tr><th class=\"l\">total</th><th>%.1f</th><th></th></tr></table>\n", total);
  return out;
}

}  // namespace

// What the job warned about (e.g. a model traced in eval mode), one line each.
std::string WarningsSection(const std::vector<v1::JobEvent>& events) {
  std::string items;
  for (const auto& e : events) {
    if (e.warning()) items += absl::StrCat("<li>", Escape(e.message()), "</li>");
  }
  return items.empty() ? "" : absl::StrCat("<ul class=\"warning\" id=\"warnings\">", items, "</ul>\n");
}

const v1::Policy* ReportedPolicy(const v1::SearchJob& job, const std::vector<v1::JobEvent>& events) {
  if (job.state() == v1::SUCCEEDED && job.result().policy().layers_size() > 0) return &job.result().policy();
  for (auto it = events.rbegin(); it != events.rend(); ++it) {
    if (it->policy().layers_size() > 0) return &it->policy();
  }
  return nullptr;
}

std::string RenderReport(const v1::SearchJob& job, const std::vector<v1::JobEvent>& events) {
  const v1::JobSpec& spec = job.spec();
  const v1::Policy* policy = ReportedPolicy(job, events);
  const std::string model = spec.model_path().empty() ? spec.model() : "uploaded TorchScript model";
  std::string out = absl::StrFormat(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>qsearch report: %s</title>\n"
      "<style>%s</style></head>\n<body>\n<h1>qsearch report: %s</h1>\n",
      Escape(job.name()), kStyle, Escape(job.name()));
  const auto& d = spec.dataset();
  out += absl::StrFormat("<p class=\"meta\" id=\"meta\">model <b>%s</b> · data set <b>%s</b>", Escape(model), Escape(d.kind()));
  if (d.train_size() > 0 || d.test_size() > 0) {
    out += absl::StrFormat(" (train %s, validation %d, test %s)", d.train_size() > 0 ? absl::StrCat(d.train_size()) : "all",
                           d.val_size(), d.test_size() > 0 ? absl::StrCat(d.test_size()) : "all");
  }
  out += absl::StrFormat(" · state <b id=\"state\">%s</b>", v1::JobState_Name(job.state()));
  out += absl::StrFormat(" · epochs pre-train %d, QSS %d, QPL %d, fine-tune %d", spec.pretrain_epochs(), spec.qss().epochs(),
                         spec.qpl().epochs(), spec.finetune_epochs());
  if (!Time(job.create_time()).empty()) out += absl::StrCat(" · submitted ", Time(job.create_time()));
  if (job.end_time().seconds() > 0 && job.start_time().seconds() > 0) {
    out += absl::StrFormat(" · ran %.0f s", static_cast<double>(job.end_time().seconds() - job.start_time().seconds()) +
                                                (job.end_time().nanos() - job.start_time().nanos()) / 1e9);
  }
  if (job.attempts() > 1) out += absl::StrFormat(" · %d attempts (resumed from checkpoints)", job.attempts());
  if (job.result().devices_size() > 0) {
    out += absl::StrCat(" · on ", Escape(absl::StrJoin(job.result().devices(), ", ")));
  }
  out += "</p>\n";
  if (!job.error_message().empty()) out += absl::StrCat("<p class=\"error\">", Escape(job.error_message()), "</p>\n");
  out += WarningsSection(events);
  if (job.state() != v1::SUCCEEDED && job.has_last_event()) {
    out += absl::StrFormat("<p class=\"note\">Latest progress: %s, epoch %d. %s</p>\n", PhaseLabel(job.last_event().phase()),
                           job.last_event().epoch() + 1, Escape(job.last_event().message()));
  }

  out += AccuracySection(job, policy);
  if (policy != nullptr) {
    if (job.state() != v1::SUCCEEDED) {
      out += "<p class=\"note\">The job has not finished: the policy below is the latest one the search reported.</p>\n";
    }
    out += BudgetSection(*policy);
    out += LayerSection(*policy);
  } else {
    out += "<h2 id=\"layers\">Per-layer bit widths</h2>\n<p class=\"note\">No policy yet.</p>\n";
  }
  out += CurvesSection(events);
  out += TimesSection(job.result());
  out += absl::StrFormat("<p class=\"note\">Generated by qsearch report from %d stored events of %s.</p>\n</body></html>\n",
                         events.size(), Escape(job.name()));
  return out;
}

}  // namespace qsearch::client
