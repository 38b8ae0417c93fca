// Quantization Scheme Search: per layer (or model-wide) logits over weight and activation
// candidates, mixed by softmax or straight-through Gumbel with an annealed temperature;
// one convolution per layer on the mixed weight and mixed input (qlayer.h). Weights train
// on the training split; the logits on the validation split when `bilevel` (first order),
// else jointly. Leaves job.qss_w / qss_a with each layer's argmax choice.
#ifndef QSEARCH_SEARCH_QSS_H_
#define QSEARCH_SEARCH_QSS_H_

#include "absl/status/status.h"
#include "search/job_context.h"

namespace qsearch::search {

absl::Status RunQss(JobContext& job);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_QSS_H_
