// Bit widths a layer's chosen scheme may take: the integer widths QPL learns between and
// repair moves along, a candidate re-stated at another width, and the activation
// candidates for a layer whose input is signed. Pure functions of spec strings.
#ifndef QSEARCH_SEARCH_BIT_WIDTHS_H_
#define QSEARCH_SEARCH_BIT_WIDTHS_H_

#include <string>
#include <vector>

#include "qsearch/v1/job.pb.h"

namespace qsearch::search {

// `spec` with its bits replaced; "" when that width is invalid for the scheme (re-parsing
// applies the cross-key rules, e.g. esb's k <= bits-1).
std::string AtBits(const std::string& spec, int bits);

// Integer weight / activation widths QPL and repair may use for a chosen scheme: the job's
// [min_bits, max_bits] within the scheme's own range (the scheme's range alone when the
// two do not meet, e.g. binary); activations are pinned unless learned. Ascending.
std::vector<int> WeightWidths(const std::string& spec, const v1::QplOptions& qpl);
std::vector<int> ActWidths(const std::string& spec, const v1::QplOptions& qpl);

// Activation candidates for a layer whose input can be negative: schemes with a `signed`
// key switch it on; unsigned-only schemes (pact, dorefa_act) drop out.
std::vector<std::string> ForSignedInput(const std::vector<std::string>& specs);

}  // namespace qsearch::search

#endif  // QSEARCH_SEARCH_BIT_WIDTHS_H_
