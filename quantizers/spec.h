// Quantizer spec strings ("esb:bits=4,k=1") and the scheme registry's parameter tables.
// This file knows nothing of LibTorch: the client and the service validate specs with it.
//
// Grammar: SCHEME[:KEY=VALUE(,KEY=VALUE)*]. Keys a spec leaves out take the registry's
// default; ToSpec() always prints every key in registry order, so equal quantizers print
// equal strings. Thread-safety: the registry is immutable after first use.
#ifndef QSEARCH_QUANTIZERS_SPEC_H_
#define QSEARCH_QUANTIZERS_SPEC_H_

#include <map>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace qsearch::quantizers {

enum class Role { kWeight, kActivation };

struct ParamInfo {
  enum class Type { kInt, kReal, kBool, kChoice };
  std::string key;
  Type type = Type::kInt;
  double min = 0;  // inclusive range for kInt / kReal
  double max = 0;
  std::vector<std::string> choices;  // for kChoice
  std::string default_value;
  std::string doc;
};

struct SchemeInfo {
  std::string name;
  Role role = Role::kWeight;
  std::string doc;
  std::vector<ParamInfo> params;
  // True when `bits` may be fractional (FracBits interpolation between floor and ceil).
  bool fractional_bits = false;

  const ParamInfo* FindParam(absl::string_view key) const;
};

// Every registered scheme, weight schemes first, in a stable order.
const std::vector<SchemeInfo>& Schemes();
// nullptr when no scheme has that name.
const SchemeInfo* FindScheme(absl::string_view name);
// "uniform, lsq, ..." for error messages and --help output.
std::string SchemeNames(Role role);

// A parsed, validated spec: every key of the scheme present, values checked against the
// registry's ranges. Cheap to copy.
class SpecValues {
 public:
  const SchemeInfo& scheme() const { return *scheme_; }
  double Real(absl::string_view key) const;
  long Int(absl::string_view key) const;
  bool Bool(absl::string_view key) const;
  const std::string& Text(absl::string_view key) const;
  // Replaces one value (already validated by the caller, e.g. integer bits for FracBits).
  void Set(absl::string_view key, std::string value);
  std::string ToSpec() const;

 private:
  friend absl::StatusOr<SpecValues> ParseSpec(absl::string_view spec);
  const SchemeInfo* scheme_ = nullptr;
  std::map<std::string, std::string> values_;
};

// Parses and validates a spec. Errors are InvalidArgument naming the scheme, the key and
// the accepted range or choices.
absl::StatusOr<SpecValues> ParseSpec(absl::string_view spec);

// Formats a number the way specs print it: "4", "3.5", "0.7".
std::string FormatNumber(double v);

}  // namespace qsearch::quantizers

#endif  // QSEARCH_QUANTIZERS_SPEC_H_
