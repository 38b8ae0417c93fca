#include "common/tensor_heap.h"

#include <malloc.h>

namespace qsearch {

bool KeepFreedTensorMemory() {
  // Setting either value also turns off glibc's sliding mmap threshold.
  const bool mmap_ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
  const bool trim_ok = mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  // No block at all on mmap: the threshold above only covers blocks up to 32 MiB.
  const bool no_mmap_ok = mallopt(M_MMAP_MAX, 0) == 1;
  return mmap_ok && trim_ok && no_mmap_ok;
}

}  // namespace qsearch
