// File: services/client/generation_client.h
//
// A small synchronous C++ client for GenerationService, used by the
// kvguard-client tool, the load generator and the tests.
//
//   GenerationClient client("127.0.0.1:50051");
//   v1::GenerateRequest req;  req.set_text("Tom has 3 apples.");
//   req.mutable_stopping()->set_max_new_tokens(32);
//   auto done = client.Generate(req, [](const v1::TokenChunk& c) { std::cout << c.text_delta(); });
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/grpc_tls.h"
#include "kvguard/v1/generation.grpc.pb.h"

namespace kvguard::client {

struct GenerateOutcome {
  std::vector<int32_t> token_ids;
  std::string text;  // concatenated text deltas
  v1::GenerationComplete complete;
  double time_to_first_token_s = 0;   // client-side, from the call start
  std::vector<double> inter_token_s;  // client-side gaps between chunks
  double total_s = 0;
};

struct CallOptions {
  std::optional<std::chrono::milliseconds> deadline;
  // How long a call waits for the channel to connect before it fails with UNAVAILABLE
  // (bounded by `deadline`); 0 sends at once (gRPC's fail-fast). See Connect().
  std::chrono::milliseconds connect_timeout{5000};
  // Cancel the call after this many chunks (tests of cancellation).
  std::optional<int> cancel_after_chunks;
};

// How a client reaches the server (kvguard-client, the load generator).
struct ChannelOptions {
  // "" = gRPC's default (pick_first: one connection). "round_robin" keeps a
  // connection to every address the target resolves to and spreads calls
  // over them: with "dns:///kvguard-headless.NS.svc.cluster.local:50051"
  // (the chart's headless Service) every replica, HPA-added ones included,
  // gets traffic. The server's max_connection_age re-resolves periodically.
  std::string lb_policy;
  bool tls = false;        // TLS even without files (the system roots verify the server)
  TlsFiles tls_files;      // ca_file / client cert+key / server_name
  std::string auth_token;  // sent as "authorization: Bearer <token>"
};

// The channel for `target`; INVALID_ARGUMENT / NOT_FOUND for bad TLS files or
// an unknown lb_policy.
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const std::string& target,
                                                           const ChannelOptions& options);

class GenerationClient {
 public:
  // The channel reconnects 100 ms after a failed attempt (gRPC's default is 1 s).
  explicit GenerationClient(const std::string& address);
  explicit GenerationClient(std::shared_ptr<grpc::Channel> channel);
  // A channel from OpenChannel(); every call carries `auth_token` when it is set.
  GenerationClient(std::shared_ptr<grpc::Channel> channel, std::string target,
                   std::string auth_token);

  // Waits until the channel is connected, at most `timeout`; UNAVAILABLE naming the address
  // otherwise. Every call does this first, so a connection attempt that fails transiently is
  // retried before a request is sent, never after: Debian's gRPC 1.51 reads errno after other
  // calls in its non-blocking connect path (fixed upstream by saving it right after connect()),
  // so an in-progress loopback connect is sometimes reported as failed with an unrelated errno
  // ("ipv4:127.0.0.1:PORT: No such file or directory"); a fail-fast RPC would fail with it.
  absl::Status Connect(std::chrono::milliseconds timeout);

  // Streams one generation; `on_chunk` (optional) sees each chunk as it
  // arrives. The gRPC status of a failed call becomes the returned status.
  absl::StatusOr<GenerateOutcome> Generate(
      const v1::GenerateRequest& request,
      const std::function<void(const v1::TokenChunk&)>& on_chunk = nullptr,
      const CallOptions& options = {});
  absl::StatusOr<v1::ModelInfo> GetModelInfo();
  absl::StatusOr<v1::ListCompressorsResponse> ListCompressors();
  // grpc.health.v1 status of the whole server ("" service): SERVING etc.
  absl::StatusOr<std::string> Health();

 private:
  std::shared_ptr<grpc::Channel> channel_;
  // A call's context with the deadline and the bearer token.
  void Prepare(grpc::ClientContext& context) const;

  std::string target_;
  std::string auth_token_;
  std::unique_ptr<v1::GenerationService::Stub> stub_;
};

absl::Status FromGrpc(const grpc::Status& status);

}  // namespace kvguard::client
