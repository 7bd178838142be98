// File: common/blas_threads.h
//
// libtorch's CPU matmuls go through the system BLAS (Debian's libblas.so.3
// alternative). When that is OpenBLAS, it keeps its own thread pool,
// sized to the machine, which fights libtorch's intra-op threads on small
// per-token matmuls; callers that pick a thread count pin OpenBLAS to it too.
#pragma once

#include <dlfcn.h>

namespace kvguard {

// No-op when the BLAS is not OpenBLAS.
inline void SetBlasThreads(int threads) {
  using SetFn = void (*)(int);
  if (auto* set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(threads);
}

}  // namespace kvguard
