// Keeping freed tensor memory in the process for the next step. By default glibc hands
// every block above 128 KiB to mmap and gives it back on free, so each training step and
// each evaluation batch faults in and zeroes its activations again: at batch 512 a
// resnet20 evaluation pass spent about a fifth of its time that way (docs/benchmarks.md,
// "Search cost"). Quantized layers allocate one more activation-sized tensor each, so
// they paid it more than float training did.
#ifndef QSEARCH_COMMON_TENSOR_HEAP_H_
#define QSEARCH_COMMON_TENSOR_HEAP_H_

namespace qsearch {

// Every block comes from the heap, whatever its size, and freed heap memory is kept up to
// 1 GiB. glibc's mmap threshold stops at 32 MiB, so raising it alone left larger blocks
// on mmap: at batch 512 mobilenetv2_tiny's widest activations (about 150 MB) were mapped
// and zeroed again in every evaluation batch, half of its evaluation time. Freed memory
// below a live block cannot go back to the kernel, so the process holds close to its peak
// until it exits, which suits a worker that runs one job. Process-wide, for processes that
// train or evaluate (the worker, the benchmarks); false when glibc refused.
bool KeepFreedTensorMemory();

}  // namespace qsearch

#endif  // QSEARCH_COMMON_TENSOR_HEAP_H_
