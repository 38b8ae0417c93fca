// Test helpers: EXPECT_OK / ASSERT_OK for absl::Status and StatusOr (Abseil 20220623 has
// no status matchers), and small tensor utilities.
#ifndef QSEARCH_TESTS_TEST_UTIL_H_
#define QSEARCH_TESTS_TEST_UTIL_H_

#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qsearch::testing {

inline const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace qsearch::testing

#define EXPECT_OK(expr) EXPECT_TRUE(::qsearch::testing::ToStatus(expr).ok()) \
    << ::qsearch::testing::ToStatus(expr)
#define ASSERT_OK(expr) ASSERT_TRUE(::qsearch::testing::ToStatus(expr).ok()) \
    << ::qsearch::testing::ToStatus(expr)

#endif  // QSEARCH_TESTS_TEST_UTIL_H_
