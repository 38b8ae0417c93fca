// A finished job's files in its output directory, named by common/artifacts.h: the
// policy and the result (deterministic JSON, so a resumed job writes the same bytes as an
// uninterrupted one), NNI's config_list, the quantized checkpoint (quantized_checkpoint.h)
// and, for a user's TorchScript model, the quantized TorchScript (script_model.h). Each
// file is written to a temporary name and renamed into place.
#ifndef QSEARCH_SEARCH_EXPORT_H_
#define QSEARCH_SEARCH_EXPORT_H_

#include "absl/status/status.h"
#include "search/job_context.h"

namespace qsearch::search {

// Writes every artifact of `job.result` to job.options.out_dir (nothing without one).
absl::Status ExportJob(JobContext& job);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_EXPORT_H_
