// GrpcGuardLink against an in-process GuardService on loopback: answers
// round-trip by batch id, Send never blocks the decode loop when the guard
// stops reading (bounded queue, drops counted), and the link shuts down
// while its writer is held by flow control.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "services/server/grpc_guard_link.h"

namespace kvguard::server {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

class TestGuard final : public v1::GuardService::Service {
 public:
  explicit TestGuard(bool stalled) : stalled_(stalled) {}
  grpc::Status Guard(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<v1::DirectiveBatch, v1::StepBatch>* stream) override {
    if (stalled_) {
      // Never reads: the client's flow-control window fills up.
      std::unique_lock<std::mutex> lock(mu_);
      while (!released_ && !context->IsCancelled()) cv_.wait_for(lock, 20ms);
      return grpc::Status::OK;
    }
    v1::StepBatch batch;
    while (stream->Read(&batch)) {
      v1::DirectiveBatch answer;
      answer.set_batch_id(batch.batch_id());
      answer.add_directives()->set_session_id("s");
      stream->Write(answer);
    }
    return grpc::Status::OK;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  bool stalled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

struct Served {
  std::unique_ptr<TestGuard> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

Served Serve(bool stalled) {
  Served s{.service = std::make_unique<TestGuard>(stalled)};
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(s.service.get());
  s.server = builder.BuildAndStart();
  s.address = "127.0.0.1:" + std::to_string(port);
  return s;
}

bool WaitConnected(const GrpcGuardLink& link) {
  for (int i = 0; i < 200 && !link.connected(); ++i) std::this_thread::sleep_for(10ms);
  return link.connected();
}

v1::StepBatch Batch(uint64_t id, int floats) {
  v1::StepBatch b;
  b.set_batch_id(id);
  v1::StepReport* r = b.add_reports();
  r->set_session_id("s");
  for (int i = 0; i < floats; ++i) r->add_logits(static_cast<float>(i));
  return b;
}

TEST(GuardLinkTest, AnswersComeBackByBatchId) {
  Served guard = Serve(/*stalled=*/false);
  GrpcGuardLink link(guard.address);
  ASSERT_TRUE(WaitConnected(link));
  for (uint64_t id = 1; id <= 20; ++id) {
    link.Send(Batch(id, 8));
    auto answer = link.Await(id, Clock::now() + 2s);
    ASSERT_TRUE(answer.has_value()) << id;
    EXPECT_EQ(answer->batch_id(), id);
  }
  EXPECT_EQ(link.stats().sent, 20);
  EXPECT_EQ(link.stats().dropped_backpressure, 0);
  guard.server->Shutdown(std::chrono::system_clock::now() + 1s);
}

TEST(GuardLinkTest, SendNeverBlocksWhenTheGuardStopsReading) {
  Served guard = Serve(/*stalled=*/true);
  const auto destroyed_at = [&] {
    GrpcGuardLink link(guard.address);
    EXPECT_TRUE(WaitConnected(link));
    // ~400 KB per batch: the HTTP/2 window fills within a few batches.
    double slowest_ms = 0;
    for (uint64_t id = 1; id <= 200; ++id) {
      const auto t0 = Clock::now();
      link.Send(Batch(id, 100000));
      slowest_ms = std::max(slowest_ms,
                            std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    // A Send held by flow control would never return; 500 ms leaves room for a sanitizer
    // build copying a 400 KB batch (TSan: 126 ms).
    EXPECT_LT(slowest_ms, 500.0);
    const GuardLinkStats stats = link.stats();
    EXPECT_GT(stats.dropped_backpressure, 100);
    EXPECT_FALSE(link.Await(200, Clock::now() + 50ms).has_value());  // a miss, not a hang
    return Clock::now();
  }();
  // The destructor returned although the writer was held by flow control.
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - destroyed_at).count(), 5.0);
  guard.service->Release();
  guard.server->Shutdown(std::chrono::system_clock::now() + 1s);
}

}  // namespace
}  // namespace kvguard::server
