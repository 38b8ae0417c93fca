// Test helpers: EXPECT_OK / ASSERT_OK for absl::Status and StatusOr (Abseil 20220623 has
// no status matchers), each evaluating its argument once, and fresh temporary folders.
#ifndef QSEARCH_TESTS_TEST_UTIL_H_
#define QSEARCH_TESTS_TEST_UTIL_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qsearch::testing {

// Every directory FreshDir made in this process. They are removed after the last test
// when every test passed (below, whichever main runs the tests); a failed run keeps them
// to look at.
inline std::vector<std::string>& FreshDirs() {
  static std::vector<std::string> dirs;
  return dirs;
}

class FreshDirsCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!::testing::UnitTest::GetInstance()->Passed()) return;
    for (const auto& dir : FreshDirs()) {
      std::error_code ignored;  // a directory a test removed itself, or one it cannot
      std::filesystem::remove_all(dir, ignored);
    }
  }
};
// One registration per test binary (an inline variable is initialised once).
inline ::testing::Environment* const kFreshDirsCleanup = ::testing::AddGlobalTestEnvironment(new FreshDirsCleanup);

// An empty directory under the system temp dir, named for the test and this process, so
// parallel test processes never share one.
inline std::string FreshDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  FreshDirs().push_back(dir.string());
  return dir.string();
}

// A file's bytes ("" when it cannot be read).
inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// For EXPECT_PRED_FORMAT1: evaluates the expression once (a failing search is not re-run
// to print its status).
template <typename S>
::testing::AssertionResult IsOk(const char* text, const S& value) {
  const absl::Status& s = ToStatus(value);
  if (s.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << text << " is " << s;
}

}  // namespace qsearch::testing

#define EXPECT_OK(expr) EXPECT_PRED_FORMAT1(::qsearch::testing::IsOk, expr)
#define ASSERT_OK(expr) ASSERT_PRED_FORMAT1(::qsearch::testing::IsOk, expr)

#define QSEARCH_TEST_CONCAT_INNER(a, b) a##b
#define QSEARCH_TEST_CONCAT(a, b) QSEARCH_TEST_CONCAT_INNER(a, b)
// ASSERT_OK_AND_ASSIGN(T x, StatusOr<T> expr): asserts ok, then declares x.
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL(QSEARCH_TEST_CONCAT(_status_or_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  ASSERT_TRUE(tmp.ok()) << tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // QSEARCH_TESTS_TEST_UTIL_H_
