// Bit widths of spec strings.
#include "search/bit_widths.h"

#include <algorithm>
#include <cmath>

#include "quantizers/spec.h"

namespace qsearch::search {
namespace {

// Widths in [lo, hi] the scheme of `spec` accepts.
std::vector<int> AllowedBits(const std::string& spec, double lo, double hi) {
  std::vector<int> out;
  // Widths live in 1..32 whatever the caller passes (a NaN makes the range empty).
  if (!(lo <= hi)) return out;
  lo = std::max(lo, 1.0);
  hi = std::min(hi, 32.0);
  for (int b = static_cast<int>(std::ceil(lo)); b <= static_cast<int>(std::floor(hi)); ++b) {
    if (!AtBits(spec, b).empty()) out.push_back(b);
  }
  return out;
}

}  // namespace

std::string AtBits(const std::string& spec, int bits) {
  auto v = quantizers::ParseSpec(spec);
  if (!v.ok()) return "";
  v->Set("bits", std::to_string(bits));
  auto again = quantizers::ParseSpec(v->ToSpec());
  return again.ok() ? again->ToSpec() : "";
}

std::vector<int> WeightWidths(const std::string& spec, const v1::QplOptions& q) {
  const auto* p = quantizers::ParseSpec(spec)->scheme().FindParam("bits");
  std::vector<int> ok = AllowedBits(spec, std::max(q.min_bits(), p->min), std::min(q.max_bits(), p->max));
  return ok.empty() ? AllowedBits(spec, p->min, p->max) : ok;
}
std::vector<int> ActWidths(const std::string& spec, const v1::QplOptions& q) {
  if (!q.learn_activation_bits()) return {static_cast<int>(std::lround(q.activation_bits()))};
  const auto* p = quantizers::ParseSpec(spec)->scheme().FindParam("bits");
  return AllowedBits(spec, std::max(q.min_bits(), p->min), std::min(q.max_bits(), p->max));
}

std::vector<std::string> ForSignedInput(const std::vector<std::string>& specs) {
  std::vector<std::string> out;
  for (const auto& s : specs) {
    auto v = quantizers::ParseSpec(s);
    if (!v.ok() || v->scheme().FindParam("signed") == nullptr) continue;
    if (v->Real("bits") < 2) v->Set("bits", "2");
    v->Set("signed", "true");
    out.push_back(v->ToSpec());
  }
  if (out.empty()) out.push_back("uniform_act:bits=8,signed=true");
  return out;
}

}  // namespace qsearch::search
