// File: services/server/grpc_guard_link.h
//
// GuardLink over one long-lived gRPC bidirectional stream (GuardService.Guard).
//
// Threads: Send() only queues (never blocks the decode loop); a writer
// thread drains the queue onto the stream, a reader thread (the connector,
// between reconnects) files answers by batch id, and when the stream breaks
// the connector re-opens it with exponential backoff (100 ms .. 5 s).
// Each stream is one Call that owns its context, so a write failure cancels
// the call it happened on, never a newer one. When the guard stops reading
// and flow control holds the writer, the queue keeps at most kMaxQueued
// batches and drops the oldest (counted): those steps miss their deadline
// and the scheduler's fail-safe applies, as for any late answer.
// Sessions a new guard has not seen are recreated from their next report.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kvguard/v1/guard.grpc.pb.h"
#include "services/server/guard_link.h"

namespace kvguard::server {

struct GuardLinkStats {
  int64_t sent = 0;
  int64_t received = 0;
  int64_t dropped_disconnected = 0;  // batches not sent: no stream
  int64_t dropped_backpressure = 0;  // batches dropped: the guard stopped reading
  int64_t reconnects = 0;
};

class GrpcGuardLink final : public GuardLink {
 public:
  static constexpr size_t kMaxQueued = 8;

  // `credentials`: plaintext when null (common/grpc_tls.h makes TLS ones);
  // `args` may carry e.g. the TLS target-name override.
  explicit GrpcGuardLink(const std::string& address,
                         std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
                         grpc::ChannelArguments args = {});
  ~GrpcGuardLink() override;

  void Send(v1::StepBatch batch) override;
  std::optional<v1::DirectiveBatch> Await(uint64_t batch_id,
                                          std::chrono::steady_clock::time_point deadline) override;
  bool connected() const override { return connected_.load(); }
  GuardLinkStats stats() const;

 private:
  struct Call;
  void ConnectLoop();
  void WriteLoop();
  void ReadLoop(Call& call);

  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::GuardService::Stub> stub_;

  mutable std::mutex mu_;
  std::condition_variable cv_;         // answers, stream changes, stopping
  std::condition_variable outbox_cv_;  // the writer's queue
  std::shared_ptr<Call> call_;         // the open stream, if any
  std::deque<v1::StepBatch> outbox_;
  std::map<uint64_t, v1::DirectiveBatch> answers_;
  GuardLinkStats stats_;
  std::atomic<bool> connected_{false};
  std::atomic<bool> stopping_{false};
  std::thread connector_, writer_;
};

}  // namespace kvguard::server
