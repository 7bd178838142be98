// File: common/grpc_tls.h
//
// TLS for the gRPC services and channels, from PEM files that are watched and
// reloaded (gRPC's FileWatcherCertificateProvider re-reads them every
// `reload_s` seconds: a rotated certificate is used by new connections
// without a restart).
//
//   server: cert + key -> TLS; + ca -> mutual TLS (client certificates are
//           required and verified against ca).
//   client: ca -> verify the server against it (else the system roots);
//           cert + key -> present a client certificate (mutual TLS).
// No file at all means plaintext, as before.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace kvguard {

struct TlsFiles {
  std::string cert_file;    // PEM certificate chain (our identity)
  std::string key_file;     // PEM private key of cert_file
  std::string ca_file;      // PEM roots that verify the peer
  std::string server_name;  // client only: expected name in the server certificate
  int reload_s = 10;        // how often the files are re-read

  bool any() const { return !cert_file.empty() || !key_file.empty() || !ca_file.empty(); }
};

// Insecure credentials when `files` names nothing; INVALID_ARGUMENT for a cert
// without its key (or the reverse), NOT_FOUND for a file that cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

// Client credentials for `files`; sets the target-name override on `args`
// when files.server_name is given. A server-side-only setting (ca_file
// without cert, or nothing) is valid: the client then verifies only.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files, grpc::ChannelArguments& args);

// Plaintext unless `tls`; with `tls` and no ca_file the system roots verify the server.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files, bool tls, grpc::ChannelArguments& args);

}  // namespace kvguard
