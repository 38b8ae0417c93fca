// Test entry point: pins LibTorch's intra-op threads so results and timings are stable.
// (test_util.h removes the tests' temporary directories when every test passed.)
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

int main(int argc, char** argv) {
  at::set_num_threads(2);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
