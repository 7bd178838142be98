// File: common/grpc_serve.h
//
// One gRPC server as both binaries start theirs: TLS credentials from files
// (common/grpc_tls.h), grpc.health.v1, reflection only when asked for
// (common/grpc_reflection.h), then the caller's own builder settings.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
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

// After Shutdown() has seen every call finish: waits, until `deadline`, for
// the clients of this process's connections on `port` to hang up. They do
// once GOAWAY and their last stream's trailers have arrived; exiting first
// closes sockets that still hold the peers' unread frames, and the kernel
// then answers with a reset that can cut a stream's last frames off.
// Returns how many connections were still open at the deadline (Linux:
// /proc/net/tcp{,6} for this process's sockets; elsewhere 0 at once).
int WaitForClientsToHangUp(int port, std::chrono::steady_clock::time_point deadline);

}  // namespace kvguard
