// Keeping freed tensor memory in the process for the next step. By default glibc hands
// every block above 128 KiB to mmap and gives it back on free, so each training step and
// each evaluation batch faults in and zeroes its activations again: at batch 512 a
// resnet20 evaluation pass spent about a fifth of its time that way (docs/benchmarks.md,
// "Search cost"). Quantized layers allocate one more activation-sized tensor each, so
// they paid it more than float training did.
#ifndef QSEARCH_COMMON_TENSOR_HEAP_H_
#define QSEARCH_COMMON_TENSOR_HEAP_H_

namespace qsearch {

// Blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap and freed heap
// memory is kept up to 1 GiB; larger blocks still go straight to mmap. Process-wide, for
// processes that train or evaluate (the worker, the benchmarks); false when glibc refused.
bool KeepFreedTensorMemory();

}  // namespace qsearch

#endif  // QSEARCH_COMMON_TENSOR_HEAP_H_
