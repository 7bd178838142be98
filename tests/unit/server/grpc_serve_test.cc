// WaitForClientsToHangUp on a real loopback server: a connected client counts
// until GOAWAY from Shutdown() makes it hang up, and the wait ends then, not
// at its deadline.
#include "common/grpc_serve.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>

#include "kvguard/v1/guard.grpc.pb.h"

namespace kvguard {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

TEST(GrpcServeTest, WaitsForConnectedClientsToHangUpAfterShutdown) {
  v1::GuardService::Service service;  // any service: only connections matter here
  int port = 0;
  auto server = StartGrpcServer(service, {.listen = "127.0.0.1:0"}, &port);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(WaitForClientsToHangUp(port, Clock::now()), 0) << "no client yet";

  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() + 10s));
  EXPECT_EQ(WaitForClientsToHangUp(port, Clock::now()), 1) << "the client is connected";

  // GOAWAY, no call in flight: the client closes its end, and the wait sees it.
  (*server)->Shutdown();
  const auto start = Clock::now();
  EXPECT_EQ(WaitForClientsToHangUp(port, start + 10s), 0);
  EXPECT_LT(Clock::now() - start, 5s) << "waited for the deadline, not for the client";
}

}  // namespace
}  // namespace kvguard
