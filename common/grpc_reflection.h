// File: common/grpc_reflection.h
//
// gRPC server reflection, off unless asked for. Debian's libgrpc++_reflection
// registers its plugin with every ServerBuilder from a static initializer as
// soon as it is loaded, so linking it would serve reflection always; the
// binaries do not link it and load it here, before building the server, only
// when --enable_reflection is given.
#pragma once

#include "absl/status/status.h"

namespace kvguard {

absl::Status EnableServerReflection();

}  // namespace kvguard
