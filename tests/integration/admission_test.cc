// Probe and restart through the real server and guard on loopback: a guard
// whose admission rule fires at the first token restarts a guarded request at
// the lower ratio before the client sees anything, so the client receives
// exactly the tokens of a static run at that ratio; a rule that never fires
// leaves the request alone; a generation shorter than the hold-back still
// delivers every token.
#include <gtest/gtest.h>

#include <fstream>

#include "services/client/generation_client.h"
#include "tests/integration/process.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard {
namespace {

using client::GenerationClient;
using testing::ChildProcess;

// Modes never change (enter thresholds of 1), so the ratio in force is the requested one.
std::string WriteConfig(const std::string& dir, double threshold) {
  const std::string path = dir + "/controller.json";
  std::ofstream(path)
      << R"({"alert": {"enter": 1.0, "exit": 0.5}, "safe": {"enter": 1.0, "exit": 0.5},
    "recovery": {"enabled": false, "enter": 1.0},
    "admission": {"streaming_llm": {"probe_tokens": 8, "threshold": )"
      << threshold << R"(, "min_requested_ratio": 0.75, "restart_ratio": 0.25}}})";
  return path;
}

struct Stack {
  std::unique_ptr<ChildProcess> guard, server;
  std::string address;
  int metrics_port = 0;
};

Stack Start(const std::string& config) {
  Stack s;
  const int guard_port = testing::FreePort();
  s.guard = std::make_unique<ChildProcess>(
      std::string(KVG_BIN_DIR) + "/kvguard-guard",
      std::vector<std::string>{"--listen", "127.0.0.1:" + std::to_string(guard_port),
                               "--metrics_listen", "", "--config", config, "--model", ""});
  EXPECT_TRUE(s.guard->WaitFor("listening on", std::chrono::seconds(20)).has_value())
      << s.guard->output();
  s.metrics_port = testing::FreePort();
  s.server = std::make_unique<ChildProcess>(
      std::string(KVG_BIN_DIR) + "/kvguard-server",
      std::vector<std::string>{"--model", testing::ModelsPath("stories260K/stories260K.bin"),
                               "--listen", "127.0.0.1:0", "--metrics_listen",
                               "127.0.0.1:" + std::to_string(s.metrics_port), "--guard",
                               "127.0.0.1:" + std::to_string(guard_port), "--guard_deadline_ms",
                               "2000", "--guard_probe_tokens", "8", "--threads", "1"});
  auto port = s.server->WaitFor("listening on 127\\.0\\.0\\.1:([0-9]+)", std::chrono::seconds(30));
  EXPECT_TRUE(port.has_value()) << s.server->output();
  s.address = "127.0.0.1:" + port.value_or("0");
  return s;
}

v1::GenerateRequest Request(double ratio, bool guarded, int max_new) {
  v1::GenerateRequest r;
  for (int id : {1, 403, 407, 259, 354, 336, 324, 314, 269, 368, 382, 373, 361, 343, 364, 371}) {
    r.mutable_token_ids()->add_ids(id);
  }
  r.mutable_stopping()->set_max_new_tokens(max_new);
  r.mutable_stopping()->set_ignore_eos(true);
  r.mutable_compression()->set_compressor("streaming_llm");
  r.mutable_compression()->mutable_ratio()->set_value(ratio);
  r.mutable_compression()->mutable_guard()->set_value(guarded);
  return r;
}

class AdmissionTest : public ::testing::Test {
 protected:
  testing::TempDir tmp_;
};

TEST_F(AdmissionTest, AHighHazardInTheProbeRestartsAtTheLowerRatioBeforeAnyTokenIsStreamed) {
  Stack s = Start(WriteConfig(tmp_.path(), 0.0));
  GenerationClient c(s.address);
  auto static_low = c.Generate(Request(0.25, false, 48));
  auto static_high = c.Generate(Request(0.75, false, 48));
  ASSERT_TRUE(static_low.ok() && static_high.ok());
  ASSERT_NE(static_low->token_ids, static_high->token_ids)
      << "the two ratios must differ for the test to mean much";
  std::vector<uint32_t> steps;
  auto guarded = c.Generate(Request(0.75, true, 48),
                            [&](const v1::TokenChunk& ch) { steps.push_back(ch.state().step()); });
  ASSERT_TRUE(guarded.ok()) << guarded.status();
  EXPECT_EQ(guarded->token_ids,
            static_low->token_ids);  // exactly the 0.25 run: no probe token leaked
  ASSERT_EQ(steps.size(), 48u);
  for (uint32_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], i);
  EXPECT_EQ(guarded->complete.mode_steps().at("restart"), 1u);
  EXPECT_EQ(testing::MetricValue(testing::HttpGet(s.metrics_port, "/metrics"),
                                 "kvguard_guard_restarts_total"),
            1);
}

TEST_F(AdmissionTest, ARuleThatNeverFiresLeavesTheRequestAlone) {
  Stack s = Start(WriteConfig(tmp_.path(), 1.0));
  GenerationClient c(s.address);
  auto static_high = c.Generate(Request(0.75, false, 48));
  auto guarded = c.Generate(Request(0.75, true, 48));
  ASSERT_TRUE(static_high.ok() && guarded.ok());
  EXPECT_EQ(guarded->complete.fail_safe_events(), 0u)
      << "the guard missed steps: the test means nothing";
  EXPECT_EQ(guarded->token_ids, static_high->token_ids);
  EXPECT_EQ(guarded->complete.mode_steps().count("restart"), 0u);
}

TEST_F(AdmissionTest, AGenerationShorterThanTheHoldBackDeliversEveryToken) {
  Stack s = Start(WriteConfig(tmp_.path(), 1.0));
  auto out = GenerationClient(s.address).Generate(Request(0.75, true, 3));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->token_ids.size(), 3u);
  EXPECT_EQ(out->complete.usage().completion_tokens(), 3u);
}

}  // namespace
}  // namespace kvguard
