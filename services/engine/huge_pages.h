// File: services/engine/huge_pages.h
//
// CPU tensors in memory the kernel may back with 2 MiB pages. A batch-1 decode
// streams every weight once per token; on 4 KiB pages that is a TLB miss every
// 4 KiB. Debian's default THP mode is "madvise", so nothing gets huge pages
// unless it asks: THP "always" against "madvise" measured 1.06-1.10x bf16
// batch-1 decode on the 0.5B shape (reports/bench/engine.md).
#pragma once

#include <ATen/core/Tensor.h>

namespace kvguard::engine {

// An uninitialised CPU tensor in an anonymous mapping aligned to 2 MiB and
// advised MADV_HUGEPAGE (freed with munmap). Below 2 MiB, or if the mapping
// fails, a plain at::empty.
at::Tensor EmptyOnHugePages(at::IntArrayRef sizes, at::TensorOptions options);

// A contiguous copy of a CPU tensor made by EmptyOnHugePages; other devices'
// tensors are returned as they are.
at::Tensor OnHugePages(const at::Tensor& t);

}  // namespace kvguard::engine
