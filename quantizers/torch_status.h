// The one place LibTorch exceptions become absl::Status, so no c10::Error crosses a
// library boundary.
#ifndef QSEARCH_QUANTIZERS_TORCH_STATUS_H_
#define QSEARCH_QUANTIZERS_TORCH_STATUS_H_

#include <exception>
#include "absl/strings/string_view.h"
#include <type_traits>
#include <utility>

#include <c10/util/Exception.h>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace qsearch {

// First line of a c10::Error's message: LibTorch appends a C++ backtrace that helps
// nobody reading an RPC error.
inline absl::string_view FirstLine(absl::string_view what) {
  return what.substr(0, what.find('\n'));
}

// Runs fn(), turning c10::Error and std::exception into InternalError with `context`.
// fn returns a value (wrapped into StatusOr) or a Status/StatusOr (passed through).
namespace internal {
template <typename R>
struct CatchResult {
  using type = absl::StatusOr<R>;
};
template <typename T>
struct CatchResult<absl::StatusOr<T>> {
  using type = absl::StatusOr<T>;
};
template <>
struct CatchResult<absl::Status> {
  using type = absl::Status;
};
template <>
struct CatchResult<void> {
  using type = absl::Status;
};
}  // namespace internal

template <typename Fn>
auto CatchTorch(absl::string_view context, Fn&& fn) {
  using R = std::invoke_result_t<Fn>;
  using Out = typename internal::CatchResult<R>::type;
  try {
    if constexpr (std::is_void_v<R>) {
      fn();
      return Out(absl::OkStatus());
    } else {
      return Out(fn());
    }
  } catch (const c10::Error& e) {
    return Out(absl::InternalError(absl::StrCat(context, ": ", FirstLine(e.what()))));
  } catch (const std::exception& e) {
    return Out(absl::InternalError(absl::StrCat(context, ": ", e.what())));
  }
}

}  // namespace qsearch

#endif  // QSEARCH_QUANTIZERS_TORCH_STATUS_H_
