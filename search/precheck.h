// The server's check of a spec at Create: ValidateSpec plus, for a zoo model, what needs
// its layer table but no data (layer selection, budget feasibility) for data sets whose
// image shape is known from the kind alone. Fast enough for an RPC handler: zoo models'
// layer tables are built once per input shape and shared. A user's TorchScript model is
// only checked to be a zip archive: nothing a user sent runs in the server (the worker
// vets and runs it, in its sandbox).
#ifndef QSEARCH_SEARCH_PRECHECK_H_
#define QSEARCH_SEARCH_PRECHECK_H_

#include "absl/status/status.h"
#include "qsearch/v1/job.pb.h"

namespace qsearch::search {

// `spec` with defaults applied (WithDefaults). InvalidArgument naming what is wrong.
absl::Status PrecheckSpec(const v1::JobSpec& spec);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_PRECHECK_H_
