// JSON for files users keep: protobuf messages with a deterministic layout (map keys in
// sorted order, so the same message always gives the same bytes, e.g. a resumed job's
// policy.json equals an uninterrupted one's), and quoting for hand-built JSON.
#ifndef QSEARCH_COMMON_JSON_H_
#define QSEARCH_COMMON_JSON_H_

#include <string>

#include <google/protobuf/message.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qsearch {

// The protobuf JSON mapping of `message`; `pretty` adds whitespace.
absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool pretty);

// `text` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view text);

}  // namespace qsearch

#endif  // QSEARCH_COMMON_JSON_H_
