// File: common/grpc_serve.h
//
// One gRPC server as both binaries start theirs: TLS credentials from files
// (common/grpc_tls.h), grpc.health.v1, reflection only when asked for
// (common/grpc_reflection.h), then the caller's own builder settings.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/grpc_tls.h"

namespace kvguard {

struct ServeOptions {
  std::string listen;  // host:port; port 0 picks a free one
  TlsFiles tls;        // none = plaintext
  bool reflection = false;
  std::function<void(grpc::ServerBuilder&)> configure;  // e.g. message size, connection age
};

// The started server; the bound port is written to *port. UNAVAILABLE when
// nothing can listen on `listen`, the TLS errors of MakeServerCredentials.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(grpc::Service& service,
                                                              const ServeOptions& options,
                                                              int* port);

}  // namespace kvguard
