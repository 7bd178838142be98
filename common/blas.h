// File: common/blas.h
//
// libtorch's CPU f32 matmuls go through the system BLAS (Debian's libblas.so.3
// alternative; scripts/install_deps.sh selects OpenBLAS). Both BLIS and OpenBLAS
// keep their own thread pools: BLIS runs one thread unless told otherwise, and
// OpenBLAS sizes its pool to the machine and fights libtorch's intra-op threads
// on small per-token matmuls, so callers that pick a thread count set the
// BLAS's too. DescribeBlas() says which library the process really loaded, so
// a benchmark can report the kernel path it measured.
#pragma once

#include <string>

namespace kvguard {

// Sets BLIS's or OpenBLAS's thread count; a no-op for other BLAS libraries.
void SetBlasThreads(int threads);

struct BlasInfo {
  std::string name;    // "BLIS", "OpenBLAS", "reference", "MKL", or "unknown"
  std::string path;    // the shared object that provides sgemm_, resolved; empty if none is loaded
  std::string detail;  // version/config string where the library offers one
};
BlasInfo DescribeBlas();

}  // namespace kvguard
