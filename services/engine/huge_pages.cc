#include "services/engine/huge_pages.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <cstdint>

namespace kvguard::engine {

at::Tensor EmptyOnHugePages(at::IntArrayRef sizes, at::TensorOptions options) {
  constexpr size_t kHuge = size_t{2} << 20, kPage = 4096;
  options = options.device(at::kCPU);
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kHuge) return at::empty(sizes, options);
  // Map 2 MiB more than needed, then unmap the unaligned head and the tail.
  const size_t len = (bytes + kPage - 1) / kPage * kPage;
  void* raw =
      mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return at::empty(sizes, options);
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHuge - 1) & ~(uintptr_t{kHuge} - 1);
  if (aligned > base) munmap(raw, aligned - base);
  munmap(reinterpret_cast<void*>(aligned + len), kHuge - (aligned - base));
  auto* data = reinterpret_cast<void*>(aligned);
  (void)madvise(data, len, MADV_HUGEPAGE);  // advice: without THP these stay 4 KiB pages
  return at::from_blob(
      data, sizes, [len](void* p) { munmap(p, len); }, options);
}

at::Tensor OnHugePages(const at::Tensor& t) {
  if (!t.device().is_cpu()) return t;
  at::Tensor out = EmptyOnHugePages(t.sizes(), t.options());
  out.copy_(t);
  return out;
}

}  // namespace kvguard::engine
