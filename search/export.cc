// The artifact files of a finished job.
#include "search/export.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/artifacts.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "search/checkpoint.h"
#include "search/quantized_checkpoint.h"
#include "search/script_model.h"

namespace qsearch::search {
namespace {

std::string PathOf(const JobContext& job, const std::string& kind) {
  return absl::StrCat(job.options.out_dir, "/", FindArtifactKind(kind)->file);
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  return WriteFileAtomically(path, std::vector<char>(text.begin(), text.end()));
}

// NNI's config_list: one entry per quantized layer, by module name.
std::string ConfigList(const v1::Policy& policy) {
  std::vector<std::string> entries;
  for (const auto& l : policy.layers()) {
    if (l.excluded()) continue;
    entries.push_back(absl::StrFormat(
        "  {\"op_names\": [%s], \"quant_types\": [\"weight\", \"input\"], "
        "\"quant_bits\": {\"weight\": %d, \"input\": %d}}",
        JsonQuote(l.name()), static_cast<int>(l.weight_bits()), static_cast<int>(l.activation_bits())));
  }
  return absl::StrCat("[\n", absl::StrJoin(entries, ",\n"), "\n]\n");
}

}  // namespace

absl::Status ExportJob(JobContext& job) {
  if (job.options.out_dir.empty()) return absl::OkStatus();
  const v1::JobResult& result = job.result;
  ASSIGN_OR_RETURN(const std::string policy, ToJson(result.policy(), /*pretty=*/true));
  RETURN_IF_ERROR(WriteText(PathOf(job, "policy"), policy));
  ASSIGN_OR_RETURN(const std::string result_json, ToJson(result, /*pretty=*/true));
  RETURN_IF_ERROR(WriteText(PathOf(job, "result"), result_json));
  RETURN_IF_ERROR(WriteText(PathOf(job, "config_list"), ConfigList(result.policy())));
  RETURN_IF_ERROR(WriteQuantizedCheckpoint(PathOf(job, "checkpoint"), *job.model, result.policy()));
  if (IsScriptModel(*job.model)) {
    RETURN_IF_ERROR(ExportTorchScript(*job.model, PathOf(job, "torchscript"), job.data.mean, job.data.std));
  }
  return absl::OkStatus();
}

}  // namespace qsearch::search
