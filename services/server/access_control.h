// File: services/server/access_control.h
//
// Who may call Generate, and how many streams each caller may hold.
//
// Bearer tokens (--auth_tokens_file): one client per line, "NAME TOKEN" (or a
// bare TOKEN, named "token-<line>"); '#' starts a comment. The file is
// re-read when its modification time changes (checked at most once a
// second), so tokens rotate without a restart; a file that fails to parse
// keeps the previous tokens and is logged. A call without an
// "authorization: Bearer ..." header gets UNAUTHENTICATED; a token that is
// not in the file gets PERMISSION_DENIED.
//
// The caller's identity (the token's NAME, else the mTLS peer's certificate
// name, else its IP address) keys the per-client stream limit
// (--max_streams_per_client): one stream more gets RESOURCE_EXHAUSTED.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvguard::server {

// Parsed tokens file: token -> client name.
absl::StatusOr<std::map<std::string, std::string>> ParseTokens(const std::string& text);

class TokenAuthenticator {
 public:
  // Loads `path` now: a missing or malformed file is an error at startup.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> Load(const std::string& path);

  // The client name for an "authorization" header value (empty when absent).
  absl::StatusOr<std::string> Authenticate(const std::string& authorization);

 private:
  explicit TokenAuthenticator(std::string path) : path_(std::move(path)) {}
  void MaybeReload();

  const std::string path_;
  std::mutex mu_;
  std::map<std::string, std::string> tokens_;
  int64_t mtime_ns_ = -1;
  std::chrono::steady_clock::time_point next_check_{};
};

// The name a server knows a caller by, without authentication: the mTLS
// certificate's name when there is one, else the peer's IP address.
std::string PeerIdentity(const grpc::CallbackServerContext& context);

// Counts open streams per client identity.
class StreamQuota {
 public:
  // max_per_client <= 0: unlimited.
  explicit StreamQuota(int max_per_client) : max_(max_per_client) {}

  // A held slot; releasing it (destruction) frees the client's stream.
  class Slot {
   public:
    Slot(StreamQuota* quota, std::string client) : quota_(quota), client_(std::move(client)) {}
    ~Slot() { quota_->Release(client_); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    StreamQuota* quota_;
    std::string client_;
  };

  // RESOURCE_EXHAUSTED when `client` already holds max_per_client streams.
  absl::StatusOr<std::unique_ptr<Slot>> Acquire(const std::string& client);
  int open(const std::string& client) const;

 private:
  void Release(const std::string& client);
  const int max_;
  mutable std::mutex mu_;
  std::map<std::string, int> open_;
};

}  // namespace kvguard::server
