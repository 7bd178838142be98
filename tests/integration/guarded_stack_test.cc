// The server and the guard sidecar as real processes on loopback: the
// per-token closed loop, the guard killed mid-stream (every request still
// completes, fail-safe events are counted), and reconnection to a new guard.
#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "services/client/generation_client.h"
#include "tests/integration/process.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard {
namespace {

using client::GenerationClient;
using testing::ChildProcess;

std::unique_ptr<ChildProcess> StartGuard(int port) {
  auto g = std::make_unique<ChildProcess>(
      std::string(KVG_BIN_DIR) + "/kvguard-guard",
      std::vector<std::string>{"--listen", "127.0.0.1:" + std::to_string(port), "--metrics_listen",
                               "", "--model", "none", "--config", "none"});
  EXPECT_TRUE(g->WaitFor("listening on", std::chrono::seconds(20)).has_value()) << g->output();
  return g;
}

v1::GenerateRequest Guarded(int max_new, const std::string& compressor = "streaming_llm",
                            double ratio = 0.5) {
  v1::GenerateRequest r;
  r.mutable_token_ids()->add_ids(1);
  r.mutable_stopping()->set_max_new_tokens(max_new);
  r.mutable_stopping()->set_ignore_eos(true);
  r.mutable_compression()->set_compressor(compressor);
  r.mutable_compression()->mutable_ratio()->set_value(ratio);
  r.mutable_compression()->mutable_guard()->set_value(true);
  return r;
}

class GuardedStackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    guard_port_ = testing::FreePort();
    metrics_port_ = testing::FreePort();
    guard_ = StartGuard(guard_port_);
    server_ = std::make_unique<ChildProcess>(
        std::string(KVG_BIN_DIR) + "/kvguard-server",
        std::vector<std::string>{
            "--model", testing::ModelsPath("stories260K/stories260K.bin"), "--listen",
            "127.0.0.1:0", "--metrics_listen", "127.0.0.1:" + std::to_string(metrics_port_),
            "--guard", "127.0.0.1:" + std::to_string(guard_port_), "--guard_deadline_ms", "200"});
    auto port = server_->WaitFor("listening on 127\\.0\\.0\\.1:([0-9]+)", std::chrono::seconds(30));
    ASSERT_TRUE(port.has_value()) << server_->output();
    address_ = "127.0.0.1:" + *port;
    // Wait until the guard stream is up.
    for (int i = 0; i < 100; ++i) {
      auto v = testing::MetricValue(testing::HttpGet(metrics_port_, "/metrics"),
                                    "kvguard_guard_connected");
      if (v && *v == 1) break;
      GenerationClient(address_).Generate(Guarded(2)).IgnoreError();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  double Metric(const std::string& text_regex) {
    auto v = testing::MetricValue(testing::HttpGet(metrics_port_, "/metrics"), text_regex);
    return v.value_or(-1);
  }
  int guard_port_ = 0, metrics_port_ = 0;
  std::unique_ptr<ChildProcess> guard_, server_;
  std::string address_;
};

TEST_F(GuardedStackTest, EveryStepCarriesTheGuardsView) {
  GenerationClient c(address_);
  std::vector<v1::StepState> states;
  auto out = c.Generate(Guarded(64),
                        [&](const v1::TokenChunk& chunk) { states.push_back(chunk.state()); });
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(states.size(), 64u);
  for (const auto& s : states) EXPECT_NE(s.mode(), v1::MODE_UNSPECIFIED);
  EXPECT_EQ(out->complete.fail_safe_events(), 0u);
  uint32_t steps = 0;
  for (const auto& [mode, n] : out->complete.mode_steps()) steps += n;
  EXPECT_EQ(steps, 64u);
  EXPECT_EQ(Metric("kvguard_guard_connected"), 1);
}

TEST_F(GuardedStackTest, GuardKilledMidStreamThenReplaced) {
  std::vector<std::future<absl::StatusOr<client::GenerateOutcome>>> calls;
  std::atomic<int> started{0};
  for (int i = 0; i < 4; ++i) {
    calls.push_back(std::async(std::launch::async, [this, &started] {
      bool first = true;
      return GenerationClient(address_).Generate(Guarded(480), [&](const v1::TokenChunk&) {
        if (first) ++started;
        first = false;
      });
    }));
  }
  for (int i = 0; i < 3000 && started.load() < 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(started.load(), 4);
  // Every stream is running (a fixed sleep once let fast streams finish first) and has
  // hundreds of steps left: the next one after the kill finds the guard gone.
  guard_->Signal(SIGKILL);
  guard_->Wait(std::chrono::seconds(5));
  uint32_t fail_safe = 0;
  for (auto& f : calls) {
    auto out = f.get();
    ASSERT_TRUE(out.ok()) << out.status();  // the guard's death never fails a request
    EXPECT_EQ(out->token_ids.size(), 480u);
    fail_safe += out->complete.fail_safe_events();
  }
  EXPECT_GT(fail_safe, 0u);
  const std::string text = testing::HttpGet(metrics_port_, "/metrics");
  EXPECT_NE(text.find("kvguard_guard_fail_safe_total{reason=\"disconnected\"}"), std::string::npos);
  EXPECT_EQ(Metric("kvguard_guard_connected"), 0);
  // A new guard on the same address: the server reconnects and steps are guarded again.
  guard_ = StartGuard(guard_port_);
  bool reconnected = false;
  for (int i = 0; i < 100 && !reconnected; ++i) {
    auto out = GenerationClient(address_).Generate(Guarded(8));
    reconnected =
        out.ok() && out->complete.fail_safe_events() == 0 && Metric("kvguard_guard_connected") == 1;
    if (!reconnected) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(reconnected);
}

}  // namespace
}  // namespace kvguard
