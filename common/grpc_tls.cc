#include "common/grpc_tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <fstream>

#include "absl/strings/str_cat.h"

namespace kvguard {
namespace {

absl::Status Readable(const std::string& flag_like, const std::string& path) {
  if (path.empty()) return absl::OkStatus();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(flag_like, " ", path, " cannot be read"));
  std::string first;
  std::getline(in, first);
  if (first.rfind("-----BEGIN", 0) != 0)
    return absl::InvalidArgumentError(absl::StrCat(flag_like, " ", path, " is not a PEM file"));
  return absl::OkStatus();
}

absl::Status CheckFiles(const TlsFiles& f) {
  if (f.cert_file.empty() != f.key_file.empty())
    return absl::InvalidArgumentError("a TLS certificate needs its key and a key its certificate");
  if (f.reload_s < 1) return absl::InvalidArgumentError("the TLS reload interval must be >= 1 s");
  for (const auto& [what, path] :
       {std::pair{"certificate", f.cert_file}, {"key", f.key_file}, {"CA", f.ca_file}}) {
    if (absl::Status st = Readable(absl::StrCat("TLS ", what), path); !st.ok()) return st;
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::experimental::CertificateProviderInterface> Provider(const TlsFiles& f) {
  using grpc::experimental::FileWatcherCertificateProvider;
  const auto every = static_cast<unsigned>(f.reload_s);
  if (f.cert_file.empty())
    return std::make_shared<FileWatcherCertificateProvider>(f.ca_file, every);
  return std::make_shared<FileWatcherCertificateProvider>(f.key_file, f.cert_file, f.ca_file,
                                                          every);
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (!files.any()) return grpc::InsecureServerCredentials();
  if (absl::Status st = CheckFiles(files); !st.ok()) return st;
  if (files.cert_file.empty())
    return absl::InvalidArgumentError("a TLS server needs a certificate and key, not only a CA");
  grpc::experimental::TlsServerCredentialsOptions options(Provider(files));
  options.watch_identity_key_cert_pairs();
  if (!files.ca_file.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files, bool tls, grpc::ChannelArguments& args) {
  if (!tls && !files.any()) return grpc::InsecureChannelCredentials();
  if (absl::Status st = CheckFiles(files); !st.ok()) return st;
  if (!files.server_name.empty()) args.SetSslTargetNameOverride(files.server_name);
  if (!files.any()) return grpc::SslCredentials(grpc::SslCredentialsOptions());  // system roots
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(Provider(files));
  if (!files.ca_file.empty()) options.watch_root_certs();
  if (!files.cert_file.empty()) options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files, grpc::ChannelArguments& args) {
  return MakeChannelCredentials(files, files.any(), args);
}

}  // namespace kvguard
