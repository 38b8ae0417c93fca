// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status code paths. Abseil 20220623 (the
// Debian version) ships neither, so the project carries these two small macros.
#ifndef QSEARCH_COMMON_STATUS_MACROS_H_
#define QSEARCH_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QSEARCH_CONCAT_INNER_(a, b) a##b
#define QSEARCH_CONCAT_(a, b) QSEARCH_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status qsearch_status_ = (expr);       \
    if (!qsearch_status_.ok()) return qsearch_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  QSEARCH_ASSIGN_OR_RETURN_IMPL_(QSEARCH_CONCAT_(qsearch_statusor_, __LINE__), lhs, expr)

#define QSEARCH_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // QSEARCH_COMMON_STATUS_MACROS_H_
