// File: services/server/grpc_guard_link.h
//
// GuardLink over one long-lived gRPC bidirectional stream (GuardService.Guard).
// A reader thread files answers by batch id; when the stream breaks, a
// reconnect thread re-opens it with exponential backoff (100 ms .. 5 s).
// Sessions the new guard has not seen are recreated by the guard from their
// next report.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
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
  int64_t reconnects = 0;
};

class GrpcGuardLink final : public GuardLink {
 public:
  explicit GrpcGuardLink(const std::string& address);
  ~GrpcGuardLink() override;

  void Send(const v1::StepBatch& batch) override;
  std::optional<v1::DirectiveBatch> Await(uint64_t batch_id,
                                          std::chrono::steady_clock::time_point deadline) override;
  bool connected() const override { return connected_.load(); }
  GuardLinkStats stats() const;

 private:
  void ConnectLoop();
  void ReadLoop(std::shared_ptr<grpc::ClientReaderWriter<v1::StepBatch, v1::DirectiveBatch>> stream);

  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::GuardService::Stub> stub_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::shared_ptr<grpc::ClientReaderWriter<v1::StepBatch, v1::DirectiveBatch>> stream_;
  std::map<uint64_t, v1::DirectiveBatch> answers_;
  GuardLinkStats stats_;
  std::atomic<bool> connected_{false};
  std::atomic<bool> stopping_{false};
  std::thread connector_;
};

}  // namespace kvguard::server
