// The job report: one self-contained HTML page (inline CSS and SVG, no scripts, no
// external assets) that shows what a search found and how it got there:
//   - float vs quantized accuracy, with the uniform and float baselines when they ran;
//   - each budget dimension against what the policy achieved;
//   - per layer, a weight and an activation bit-width bar coloured by scheme;
//   - loss and validation accuracy per epoch, one line per phase;
//   - wall time per phase.
// Every figure comes from the job record and its stored events; nothing is estimated.
//
// Bars and curves carry data attributes (class "bar weight|activation", data-layer,
// data-bits, data-scheme; class "curve", data-phase) so a browser check can compare what
// is drawn with the policy.
#ifndef QSEARCH_CLIENT_REPORT_H_
#define QSEARCH_CLIENT_REPORT_H_

#include <string>
#include <vector>

#include "qsearch/v1/service.pb.h"

namespace qsearch::client {

// The policy a report shows: the result's when the job succeeded, else the newest one an
// event carried (a running job's current policy); null when there is none yet.
const v1::Policy* ReportedPolicy(const v1::SearchJob& job, const std::vector<v1::JobEvent>& events);

// Renders the page. `events` are the job's stored events in sequence order.
std::string RenderReport(const v1::SearchJob& job, const std::vector<v1::JobEvent>& events);

}  // namespace qsearch::client

#endif  // QSEARCH_CLIENT_REPORT_H_
