// Spec parsing and the scheme registry's parameter tables (no LibTorch here).
#include "quantizers/spec.h"

#include <cmath>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace qsearch::quantizers {
namespace {

using Type = ParamInfo::Type;

ParamInfo Bits(double lo, double hi, double def) {
  return {"bits", Type::kReal, lo, hi, {}, FormatNumber(def),
          absl::StrCat("bit width ", FormatNumber(lo), "..", FormatNumber(hi),
                       "; 32 = float passthrough")};
}
ParamInfo Flag(std::string key, bool def, std::string doc) {
  return {std::move(key), Type::kBool, 0, 1, {}, def ? "true" : "false", std::move(doc)};
}
ParamInfo Real(std::string key, double lo, double hi, double def, std::string doc) {
  return {std::move(key), Type::kReal, lo, hi, {}, FormatNumber(def), std::move(doc)};
}
ParamInfo Int(std::string key, double lo, double hi, long def, std::string doc) {
  return {std::move(key), Type::kInt, lo, hi, {}, absl::StrCat(def), std::move(doc)};
}
ParamInfo Granularity() {
  return {"granularity", Type::kChoice, 0, 0, {"tensor", "channel", "group"}, "tensor",
          "one scale per tensor, per output channel (dim 0), or per group of group_size "
          "consecutive weights inside a channel"};
}
ParamInfo GroupSize() {
  return Int("group_size", 1, 1 << 20, 64,
             "weights per group when granularity=group; must divide the channel size");
}

SchemeInfo Weight(std::string name, std::string doc, std::vector<ParamInfo> own,
                  bool fractional, bool granular = true) {
  SchemeInfo info{std::move(name), Role::kWeight, std::move(doc), std::move(own), fractional};
  if (granular) {
    info.params.push_back(Granularity());
    info.params.push_back(GroupSize());
  }
  return info;
}

std::vector<SchemeInfo> BuildRegistry() {
  std::vector<SchemeInfo> r;
  r.push_back(Weight("uniform",
                     "linear min-max (asymmetric) or max-abs (symmetric) grid",
                     {Bits(1, 8, 8), Flag("symmetric", true, "zero-centred grid"),
                      Flag("signed", true, "symmetric grid spans negatives too")},
                     true));
  r.push_back(Weight("lsq", "learned step size (Esser et al. 2020)",
                     {Bits(2, 8, 4), Flag("signed", true, "codes -2^(b-1)..2^(b-1)-1")},
                     true, /*granular=*/false));
  r.push_back(Weight("dorefa", "tanh normalisation then a uniform grid on [-1, 1]",
                     {Bits(1, 8, 4)}, true));
  r.push_back(Weight("binary", "sign with mean-|W| scale (BNN / XNOR)", {Bits(1, 1, 1)},
                     false));
  r.push_back(Weight("ternary", "TWN: threshold * mean|W|, scale = mean |W| above it",
                     {Bits(2, 2, 2), Real("threshold", 0.01, 2, 0.7,
                                          "threshold as a multiple of mean |W|")},
                     false));
  r.push_back(Weight("residual", "bits residual binarisations summed", {Bits(1, 8, 2)},
                     true));
  r.push_back(Weight("pot", "power-of-two levels {0, +-2^-j} * max|W|", {Bits(2, 8, 4)},
                     true));
  r.push_back(Weight("vecq", "std-scaled half-integer grid, rescaled to keep the L2 norm",
                     {Bits(1, 8, 4)}, true));
  r.push_back(Weight("ul2q", "std-scaled half-integer grid centred on the mean",
                     {Bits(1, 8, 4)}, true));
  r.push_back(Weight("esb",
                     "elastic significant bits: k significant bits after the leading one",
                     {Bits(2, 8, 4),
                      Int("k", 0, 7, 1, "significant bits after the leading one (<= bits-1)")},
                     true));

  auto act = [&](std::string name, std::string doc, std::vector<ParamInfo> params) {
    r.push_back({std::move(name), Role::kActivation, std::move(doc), std::move(params), true});
  };
  act("uniform_act", "grid over an EMA of batch ranges; passthrough before start_step",
      {Bits(1, 8, 8), Flag("signed", false, "symmetric grid around zero instead of [0, max]"),
       Real("momentum", 0, 0.9999, 0.9, "EMA momentum of the running range"),
       Int("start_step", 0, 1e9, 0, "training steps that pass through before quantizing")});
  act("pact", "learned clip alpha (Choi et al. 2018)",
      {Bits(1, 8, 4), Real("alpha", 1e-3, 1e3, 6, "initial clip value")});
  act("lsq_act", "learned step size for activations",
      {Bits(1, 8, 4), Flag("signed", false, "codes -2^(b-1)..2^(b-1)-1 instead of 0..2^b-1")});
  act("dorefa_act", "clip to [0, 1] then a uniform grid", {Bits(1, 8, 4)});
  return r;
}

bool IsInteger(double v) { return std::floor(v) == v; }

absl::Status CheckValue(const SchemeInfo& scheme, const ParamInfo& p, std::string& value) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("scheme '", scheme.name, "': key '",
                                                   p.key, "' ", why, " (got '", value, "')"));
  };
  switch (p.type) {
    case Type::kBool:
      if (value == "true" || value == "1" || value == "yes") {
        value = "true";
      } else if (value == "false" || value == "0" || value == "no") {
        value = "false";
      } else {
        return bad("must be true or false");
      }
      return absl::OkStatus();
    case Type::kChoice:
      for (const auto& c : p.choices) {
        if (c == value) return absl::OkStatus();
      }
      return bad(absl::StrCat("must be one of ", absl::StrJoin(p.choices, ", ")));
    case Type::kInt:
    case Type::kReal: {
      double v = 0;
      if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) return bad("must be a number");
      if (p.type == Type::kInt && !IsInteger(v)) return bad("must be an integer");
      const bool passthrough = p.key == "bits" && v == 32;
      if (!passthrough && (v < p.min || v > p.max)) {
        return bad(absl::StrCat("must be in [", FormatNumber(p.min), ", ", FormatNumber(p.max),
                                "]", p.key == "bits" ? " or 32" : ""));
      }
      if (p.key == "bits" && !IsInteger(v) && !scheme.fractional_bits) {
        return bad("must be an integer for this scheme");
      }
      value = FormatNumber(v);
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

}  // namespace

const ParamInfo* SchemeInfo::FindParam(absl::string_view key) const {
  for (const auto& p : params) {
    if (p.key == key) return &p;
  }
  return nullptr;
}

const std::vector<SchemeInfo>& Schemes() {
  static const std::vector<SchemeInfo>* registry = new std::vector<SchemeInfo>(BuildRegistry());
  return *registry;
}

const SchemeInfo* FindScheme(absl::string_view name) {
  for (const auto& s : Schemes()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

std::string SchemeNames(Role role) {
  std::vector<std::string> names;
  for (const auto& s : Schemes()) {
    if (s.role == role) names.push_back(s.name);
  }
  return absl::StrJoin(names, ", ");
}

std::string FormatNumber(double v) {
  if (IsInteger(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<long long>(v));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

double SpecValues::Real(absl::string_view key) const {
  return std::strtod(Text(key).c_str(), nullptr);
}
long SpecValues::Int(absl::string_view key) const { return std::lround(Real(key)); }
bool SpecValues::Bool(absl::string_view key) const { return Text(key) == "true"; }
const std::string& SpecValues::Text(absl::string_view key) const {
  auto it = values_.find(std::string(key));
  // Keys come from the scheme's own table; a miss is a programming error.
  if (it == values_.end()) std::abort();
  return it->second;
}
void SpecValues::Set(absl::string_view key, std::string value) {
  values_[std::string(key)] = std::move(value);
}

std::string SpecValues::ToSpec() const {
  std::vector<std::string> parts;
  for (const auto& p : scheme_->params) parts.push_back(absl::StrCat(p.key, "=", Text(p.key)));
  return absl::StrCat(scheme_->name, ":", absl::StrJoin(parts, ","));
}

absl::StatusOr<SpecValues> ParseSpec(absl::string_view spec) {
  spec = absl::StripAsciiWhitespace(spec);
  absl::string_view name = spec;
  absl::string_view rest;
  if (auto colon = spec.find(':'); colon != absl::string_view::npos) {
    name = spec.substr(0, colon);
    rest = spec.substr(colon + 1);
  }
  name = absl::StripAsciiWhitespace(name);
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("empty quantizer spec '", spec, "'; expected SCHEME[:KEY=VALUE,...]"));
  }
  const SchemeInfo* scheme = FindScheme(name);
  if (scheme == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown quantizer scheme '", name, "'; weight schemes: ", SchemeNames(Role::kWeight),
        "; activation schemes: ", SchemeNames(Role::kActivation)));
  }
  SpecValues out;
  out.scheme_ = scheme;
  for (const auto& p : scheme->params) out.values_[p.key] = p.default_value;
  if (!absl::StripAsciiWhitespace(rest).empty()) {
    std::map<std::string, bool> seen;
    for (absl::string_view item : absl::StrSplit(rest, ',')) {
      item = absl::StripAsciiWhitespace(item);
      auto eq = item.find('=');
      if (eq == absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            "scheme '", scheme->name, "': expected KEY=VALUE, got '", item, "'"));
      }
      std::string key(absl::StripAsciiWhitespace(item.substr(0, eq)));
      std::string value(absl::StripAsciiWhitespace(item.substr(eq + 1)));
      const ParamInfo* p = scheme->FindParam(key);
      if (p == nullptr) {
        std::vector<std::string> keys;
        for (const auto& q : scheme->params) keys.push_back(q.key);
        return absl::InvalidArgumentError(absl::StrCat("scheme '", scheme->name,
                                                       "': unknown key '", key,
                                                       "'; valid keys: ", absl::StrJoin(keys, ", ")));
      }
      if (seen[key]) {
        return absl::InvalidArgumentError(
            absl::StrCat("scheme '", scheme->name, "': key '", key, "' given twice"));
      }
      seen[key] = true;
      if (absl::Status s = CheckValue(*scheme, *p, value); !s.ok()) return s;
      out.values_[key] = value;
    }
  }
  // Cross-key rules.
  const double bits = out.Real("bits");
  if (scheme->name == "esb" && bits != 32 && out.Int("k") > std::floor(bits) - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheme 'esb': key 'k' must be <= bits-1 (bits=", out.Text("bits"), ", k=",
        out.Text("k"), ")"));
  }
  if (scheme->name == "uniform" && bits != 32 && bits < 2 && out.Bool("symmetric") &&
      out.Bool("signed")) {
    return absl::InvalidArgumentError(
        "scheme 'uniform': key 'bits' must be >= 2 for a symmetric signed grid; use "
        "symmetric=false or the binary scheme for 1 bit");
  }
  if ((scheme->name == "uniform_act" || scheme->name == "lsq_act") && bits != 32 && bits < 2 &&
      out.Bool("signed")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheme '", scheme->name, "': key 'bits' must be >= 2 when signed=true"));
  }
  return out;
}

}  // namespace qsearch::quantizers
