// File: common/heap.h
//
// Process-wide allocator settings for the executables that run the model.
#pragma once

namespace kvguard {

// A prefill allocates activations of tens of MB per layer (rows = every
// prompt token of the step). glibc serves blocks above its mmap threshold
// (at most 32 MiB, adapting upwards) with fresh mmaps and unmaps them on free,
// so every such tensor is page-faulted in and zeroed by the kernel again:
// ~30% of a batched prefill of the test-bed model. Raising the mmap and trim
// thresholds to 1 GiB keeps freed blocks in the heap for the next step; the
// process keeps its peak heap instead of returning it (RSS stays at the
// peak, as with jemalloc/tcmalloc). Call once at the start of main().
void KeepFreedBlocksInHeap();

}  // namespace kvguard
