// A floor under the thread stack sizes that libraries ask for, linked into the
// executables that serve /metrics while libtorch's BLAS is loaded.
//
// prometheus-cpp serves /metrics with civetweb, which Debian builds to give
// its worker threads 102,400-byte stacks (pthread_attr_setstacksize). glibc
// carves a thread's static TLS out of its stack and refuses pthread_create
// when the stack cannot hold it; libtorch, libgomp and OpenBLAS (0xf000 bytes
// of TLS on its own) together need more than 100 KB, so civetweb's threads
// never start ("null context when constructing CivetServer"). Calls from the
// shared libraries bind to this definition first (the executable exports it:
// see kvg_link_thread_stack_floor in CMakeLists.txt), which raises any request
// below 1 MiB to 1 MiB and forwards to glibc.
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cstddef>

namespace {
constexpr size_t kMinThreadStack = size_t{1} << 20;
using SetStackSize = int (*)(pthread_attr_t*, size_t);
}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  static const auto real =
      reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  if (real == nullptr) return 0;  // cannot happen with glibc; keep the default stack
  return real(attr, std::max(size, kMinThreadStack));
}
