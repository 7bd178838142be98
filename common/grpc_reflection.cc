#include "common/grpc_reflection.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"

namespace kvguard {

absl::Status EnableServerReflection() {
  // RTLD_GLOBAL | RTLD_NODELETE: the plugin's factory stays registered for the process.
  void* lib = dlopen(KVG_GRPC_REFLECTION_LIB, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE);
  if (lib == nullptr)
    return absl::UnavailableError(
        absl::StrCat("server reflection needs ", KVG_GRPC_REFLECTION_LIB, ": ", dlerror()));
  return absl::OkStatus();
}

}  // namespace kvguard
