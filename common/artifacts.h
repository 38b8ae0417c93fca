// The artifacts a finished job offers for download: the one table of kinds and the files
// that hold them, shared by the worker that writes them, the server that indexes and
// serves them, and the client that names downloads after them.
#ifndef QSEARCH_COMMON_ARTIFACTS_H_
#define QSEARCH_COMMON_ARTIFACTS_H_

#include <iterator>
#include <string>

namespace qsearch {

struct ArtifactKind {
  const char* kind;  // as DownloadArtifact names it
  const char* file;  // in the job's output directory
  const char* what;  // for help texts
};

inline constexpr ArtifactKind kArtifactKinds[] = {
    {"policy", "policy.json", "the per-layer policy (JSON)"},
    {"config_list", "config_list.json", "NNI config_list (JSON)"},
    {"checkpoint", "quantized.pt", "quantized checkpoint: state_dict, codes, scales (torch.load)"},
    {"result", "result.json", "accuracies, policy and phase times (JSON)"},
    {"torchscript", "quantized_model.pt", "TorchScript models only: the quantized model (torch.jit.load)"},
};

// The entry for `kind`, or nullptr.
inline const ArtifactKind* FindArtifactKind(const std::string& kind) {
  for (const ArtifactKind& a : kArtifactKinds) {
    if (kind == a.kind) return &a;
  }
  return nullptr;
}

// "policy, config_list, checkpoint, result or torchscript", for messages.
inline std::string ArtifactKindList() {
  std::string out;
  for (size_t i = 0; i < std::size(kArtifactKinds); ++i) {
    if (i > 0) out += i + 1 == std::size(kArtifactKinds) ? " or " : ", ";
    out += kArtifactKinds[i].kind;
  }
  return out;
}

}  // namespace qsearch

#endif  // QSEARCH_COMMON_ARTIFACTS_H_
