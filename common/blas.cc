#include "common/blas.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

#include <cstdint>
#include <string>

namespace kvguard {

void SetBlasThreads(int threads) {
  if (threads <= 0) return;
  using OpenBlasSet = void (*)(int);
  if (auto* set = reinterpret_cast<OpenBlasSet>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set(threads);
  // Debian's BLIS libblas.so.3 exports only the BLAS/CBLAS API, no bli_thread_set_num_threads;
  // BLIS reads BLIS_NUM_THREADS when it initialises at its first call (none has happened yet
  // where callers set threads: at startup). A value the user exported wins.
  setenv("BLIS_NUM_THREADS", std::to_string(threads).c_str(), /*overwrite=*/0);
}

BlasInfo DescribeBlas() {
  BlasInfo info{.name = "unknown"};
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info dl{};
  if (sgemm == nullptr || dladdr(sgemm, &dl) == 0 || dl.dli_fname == nullptr) return info;
  char resolved[PATH_MAX];
  info.path = realpath(dl.dli_fname, resolved) != nullptr ? resolved : dl.dli_fname;
  // The library that provides sgemm_ decides; other BLAS libraries may be loaded too (Debian's
  // liblapack.so.3 alternative can pull OpenBLAS in beside the reference libblas.so.3).
  using VersionFn = const char* (*)();
  if (info.path.find("openblas") != std::string::npos) {
    info.name = "OpenBLAS";
    if (auto* c = reinterpret_cast<VersionFn>(dlsym(RTLD_DEFAULT, "openblas_get_config")))
      info.detail = c();
  } else if (info.path.find("blis") != std::string::npos) {
    info.name = "BLIS";  // Debian's BLIS libblas.so.3 exports no bli_* symbols
    if (const char* n = getenv("BLIS_NUM_THREADS")) info.detail = std::string("threads ") + n;
  } else if (info.path.find("/blas/") != std::string::npos) {
    info.name = "reference";  // Debian's libblas3 (netlib)
  } else if (dlsym(RTLD_DEFAULT, "mkl_get_max_threads") != nullptr) {
    info.name = "MKL";
  }
  return info;
}

}  // namespace kvguard
