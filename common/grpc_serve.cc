#include "common/grpc_serve.h"

#include "common/grpc_reflection.h"

namespace kvguard {

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(grpc::Service& service,
                                                              const ServeOptions& options,
                                                              int* port) {
  auto credentials = MakeServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) {
    if (absl::Status st = EnableServerReflection(); !st.ok()) return st;
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, port);
  if (options.configure) options.configure(builder);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || *port == 0) return absl::UnavailableError("cannot listen on " + options.listen);
  return server;
}

}  // namespace kvguard
