// Test entry point: pins LibTorch's intra-op threads so results and timings are stable,
// and removes the test's temporary directories when every test passed.
#include <filesystem>
#include <system_error>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

int main(int argc, char** argv) {
  at::set_num_threads(2);
  ::testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  if (result == 0) {
    for (const auto& dir : qsearch::testing::FreshDirs()) {
      std::error_code ignored;  // a directory a test removed itself, or one it cannot
      std::filesystem::remove_all(dir, ignored);
    }
  }
  return result;
}
