// kvguard-guard as a real process on loopback, driven by a C++ GuardService
// client: health, one DirectiveBatch per StepBatch, escalation of a looping
// session, a broken stream dropping its sessions, metrics over HTTP, an
// XGBoost model given with --model (and a mismatched one refused), and a
// clean exit on SIGTERM.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <set>

#include "guard_sidecar/features.h"
#include "guard_sidecar/hazard_model.h"
#include "kvguard/v1/guard.grpc.pb.h"
#include "services/client/generation_client.h"
#include "tests/integration/process.h"

namespace kvguard {
namespace {

using testing::ChildProcess;
using Stream = grpc::ClientReaderWriter<v1::StepBatch, v1::DirectiveBatch>;

struct Guard {
  std::unique_ptr<ChildProcess> process;
  std::string address;
  int metrics_port = 0;
};

Guard StartGuard(std::vector<std::string> extra = {}) {
  Guard g;
  // The fallback rule and built-in controller unless a test names its own (the last flag wins).
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--metrics_listen", "127.0.0.1:0",
                                   "--model",  "none",        "--config",         "none"};
  args.insert(args.end(), extra.begin(), extra.end());
  g.process = std::make_unique<ChildProcess>(std::string(KVG_BIN_DIR) + "/kvguard-guard", args);
  const auto line = g.process->WaitFor("kvguard-guard listening on", std::chrono::seconds(30));
  if (!line) return g;
  std::smatch m;
  const std::regex re(R"(listening on 127\.0\.0\.1:([0-9]+) \(metrics 127\.0\.0\.1:([0-9]+))");
  if (std::regex_search(*line, m, re)) {
    g.address = "127.0.0.1:" + m[1].str();
    g.metrics_port = std::stoi(m[2].str());
  }
  return g;
}

bool WaitServing(const std::string& address) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < end) {
    if (client::GenerationClient(address).Health().value_or("") == "SERVING") return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// One token of a crafted session: "calm" sessions produce fresh tokens at low
// entropy; the "loop" session's entropy rises and its tokens cycle with period 6.
v1::StepReport Report(const std::string& session, uint32_t t, bool looping) {
  v1::StepReport r;
  r.set_session_id(session);
  r.set_step(t);
  r.set_token_id(looping && t >= 10 ? static_cast<int32_t>(500 + t % 6) : static_cast<int32_t>(t));
  r.set_token_text(t % 7 == 3 ? " So" : " word");
  r.set_entropy(looping ? 0.5f + 0.08f * t : 0.4f);
  for (int i = 0; i < 20; ++i) r.add_top_logprobs(-0.1f - (looping ? 0.1f : 1.0f) * i);
  r.set_chosen_logprob(r.top_logprobs(0));
  r.set_logit_margin(looping ? 0.1f : 2.0f);
  v1::KvHandle* kv = r.mutable_kv();
  kv->set_total_tokens(16 + t);
  kv->set_retained_tokens(std::min<int64_t>(16 + t, 12));
  kv->set_ratio(0.8);
  kv->set_bytes(4096 * kv->retained_tokens());
  if (t > 0 && t % 4 == 0) {  // the compressor evicted something
    r.add_evicted_positions(static_cast<int32_t>(t));
    r.add_evicted_attention(0.01f * static_cast<float>(t % 13));
  }
  return r;
}

const std::vector<std::string> kSessions = {"calm-1", "calm-2", "loop"};

v1::StepBatch StepBatch(uint64_t id, uint32_t t) {
  v1::StepBatch b;
  b.set_batch_id(id);
  if (t == 0) {
    for (const auto& s : kSessions) {
      v1::SessionStart* start = b.add_starts();
      start->set_session_id(s);
      start->set_compressor("snapkv");
      start->set_requested_ratio(0.8);
      start->set_prompt_tokens(16);
      start->set_max_new_tokens(128);
    }
  }
  for (const auto& s : kSessions) *b.add_reports() = Report(s, t, s == "loop");
  return b;
}

struct Outcome {
  std::map<std::string, std::set<v1::Mode>> modes;
  bool recomputed = false;
};

// Streams `steps` batches for the three sessions, then their ends; checks the
// answers batch by batch.
Outcome DriveStream(const std::string& address, int steps) {
  Outcome o;
  auto stub =
      v1::GuardService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = stub->Guard(&context);
  for (int t = 0; t <= steps; ++t) {
    const uint64_t id = 1000 + t;
    v1::StepBatch batch = StepBatch(id, t);
    if (t == steps) {  // the last batch only ends the sessions
      batch.clear_reports();
      for (const auto& s : kSessions) batch.add_ends()->set_session_id(s);
    }
    EXPECT_TRUE(stream->Write(batch));
    v1::DirectiveBatch answer;
    EXPECT_TRUE(stream->Read(&answer));
    EXPECT_EQ(answer.batch_id(), id);
    EXPECT_EQ(answer.directives_size(), batch.reports_size());
    std::set<std::string> seen;
    for (const v1::Directive& d : answer.directives()) {
      seen.insert(d.session_id());
      EXPECT_EQ(d.step(), static_cast<uint32_t>(t));
      EXPECT_GE(d.hazard(), 0.0f);
      EXPECT_LE(d.hazard(), 1.0f);
      o.modes[d.session_id()].insert(d.mode());
      o.recomputed |= d.recompute_positions_size() > 0;
    }
    if (t < steps) {
      EXPECT_EQ(seen, std::set<std::string>(kSessions.begin(), kSessions.end()));
    }
  }
  stream->WritesDone();
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return o;
}

void ExpectEscalation(const Outcome& o) {
  EXPECT_EQ(o.modes.at("calm-1"), std::set<v1::Mode>{v1::MODE_NORMAL});
  EXPECT_EQ(o.modes.at("calm-2"), std::set<v1::Mode>{v1::MODE_NORMAL});
  const auto& loop = o.modes.at("loop");
  EXPECT_TRUE(loop.count(v1::MODE_ALERT) || loop.count(v1::MODE_SAFE)) << loop.size();
}

void StopCleanly(Guard& g) {
  g.process->Signal(SIGTERM);
  EXPECT_EQ(g.process->Wait(std::chrono::seconds(15)), 0) << g.process->output();
}

TEST(GuardServerTest, FallbackRuleStreamMetricsAndShutdown) {
  Guard g = StartGuard(
      {"--config", std::string(KVG_TEST_DATA_DIR) + "/../../guard_sidecar/config/controller.json"});
  ASSERT_FALSE(g.address.empty()) << g.process->output();
  ASSERT_TRUE(WaitServing(g.address));
  const Outcome o = DriveStream(g.address, 60);
  ExpectEscalation(o);
  EXPECT_TRUE(o.modes.at("loop").count(v1::MODE_SAFE));

  const std::string metrics = testing::HttpGet(g.metrics_port, "/metrics");
  for (const char* name :
       {"kvguard_guard_steps_total", "kvguard_guard_batches_total", "kvguard_guard_sessions_active",
        "kvguard_guard_streams_active", "kvguard_guard_hazard_bucket",
        "kvguard_guard_mode_transitions_total", "kvguard_guard_mode_steps_total",
        "kvguard_guard_predict_seconds_bucket", "kvguard_guard_batch_seconds_bucket"}) {
    EXPECT_NE(metrics.find(name), std::string::npos) << name;
  }
  EXPECT_EQ(testing::MetricValue(metrics, "kvguard_guard_steps_total"), 180.0);
  EXPECT_EQ(testing::MetricValue(metrics, "kvguard_guard_batches_total"), 61.0);
  EXPECT_EQ(testing::MetricValue(metrics, "kvguard_guard_sessions_active"), 0.0);
  EXPECT_NE(metrics.find(R"(kvguard_guard_mode_transitions_total{from="normal",to="alert"} 1)"),
            std::string::npos);
  // Which policy runs is exported and logged.
  EXPECT_NE(metrics.find(R"(kvguard_guard_model_info{controller=")"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find(R"(hazard="fallback-rule"} 1)"), std::string::npos) << metrics;
  EXPECT_NE(g.process->output().find("from fallback-rule"), std::string::npos)
      << g.process->output();
  StopCleanly(g);
}

TEST(GuardServerTest, AModelPathThatDoesNotExistIsAnErrorNotAFallback) {
  for (const char* flag : {"--model", "--config"}) {
    std::vector<std::string> args = {"--model",  "none",        "--config",         "none",
                                     "--listen", "127.0.0.1:0", "--metrics_listen", ""};
    args.insert(args.end(), {flag, "/no/such/file.json"});  // the last flag wins
    // Exits 1 with "--<flag>=... does not exist" on stderr, never serves another policy.
    ChildProcess refused(std::string(KVG_BIN_DIR) + "/kvguard-guard", args);
    EXPECT_EQ(refused.Wait(std::chrono::seconds(15)), 1) << flag;
    EXPECT_EQ(refused.output().find("listening on"), std::string::npos) << flag;
  }
}

TEST(GuardServerTest, BrokenStreamDropsItsSessions) {
  Guard g = StartGuard();
  ASSERT_FALSE(g.address.empty()) << g.process->output();
  ASSERT_TRUE(WaitServing(g.address));
  auto stub =
      v1::GuardService::NewStub(grpc::CreateChannel(g.address, grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    auto stream = stub->Guard(&context);
    ASSERT_TRUE(stream->Write(StepBatch(1, 0)));
    v1::DirectiveBatch answer;
    ASSERT_TRUE(stream->Read(&answer));
    EXPECT_EQ(answer.directives_size(), 3);
    EXPECT_EQ(testing::MetricValue(testing::HttpGet(g.metrics_port, "/metrics"),
                                   "kvguard_guard_sessions_active"),
              3.0);
    context.TryCancel();  // the server side sees a broken stream
  }
  std::optional<double> sessions, streams;
  for (int i = 0; i < 100; ++i) {
    const std::string m = testing::HttpGet(g.metrics_port, "/metrics");
    sessions = testing::MetricValue(m, "kvguard_guard_sessions_active");
    streams = testing::MetricValue(m, "kvguard_guard_streams_active");
    if (sessions == 0.0 && streams == 0.0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(sessions, 0.0);
  EXPECT_EQ(streams, 0.0);
  StopCleanly(g);
}

TEST(GuardServerTest, SigtermKeepsServingAnOpenStreamUntilTheDrainLimit) {
  Guard g = StartGuard({"--drain_wait_ms", "1500"});
  ASSERT_FALSE(g.address.empty()) << g.process->output();
  ASSERT_TRUE(WaitServing(g.address));
  auto stub =
      v1::GuardService::NewStub(grpc::CreateChannel(g.address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = stub->Guard(&context);
  ASSERT_TRUE(stream->Write(StepBatch(1, 0)));
  v1::DirectiveBatch answer;
  ASSERT_TRUE(stream->Read(&answer));
  const auto sigterm = std::chrono::steady_clock::now();
  g.process->Signal(SIGTERM);
  // Draining: the server on the other end still gets its directives...
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(stream->Write(StepBatch(2, 1)));
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.batch_id(), 2u);
  // ... until the stream stays open past --drain_wait_ms: then it is cancelled and the guard exits
  // 0.
  EXPECT_EQ(g.process->Wait(std::chrono::seconds(10)), 0) << g.process->output();
  EXPECT_GE(std::chrono::steady_clock::now() - sigterm, std::chrono::milliseconds(1400));
  EXPECT_FALSE(stream->Read(&answer));
  EXPECT_FALSE(stream->Finish().ok());
}

// Rows of the crafted sessions, labelled 1 for the looping one once it loops.
guard::Dataset CraftedDataset() {
  guard::Dataset d;
  for (auto n : guard::kFeatureNames) d.feature_names.emplace_back(n);
  for (int copy = 0; copy < 4; ++copy) {
    for (const auto& s : kSessions) {
      const bool looping = s == "loop";
      guard::SessionFeatures f(
          {.requested_ratio = 0.8, .prompt_tokens = 16, .max_new_tokens = 128});
      guard::FeatureRow row;
      for (uint32_t t = 0; t < 60; ++t) {
        f.Update(Report(s, t + copy * 60, looping), row);
        d.features.insert(d.features.end(), row.begin(), row.end());
        d.labels.push_back(looping && t >= 12 ? 1.0f : 0.0f);
      }
    }
  }
  return d;
}

TEST(GuardServerTest, ServesAnXgboostModel) {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("kvg_guard_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  auto model = guard::HazardModel::Train(CraftedDataset(), {.max_depth = 3, .rounds = 30});
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_TRUE((*model)->Save(dir + "/hazard.json").ok());
  Guard g = StartGuard({"--model", dir + "/hazard.json"});
  ASSERT_FALSE(g.address.empty()) << g.process->output();
  EXPECT_NE(g.process->output().find("xgboost model"), std::string::npos) << g.process->output();
  ASSERT_TRUE(WaitServing(g.address));
  ExpectEscalation(DriveStream(g.address, 60));
  StopCleanly(g);

  // A model over a column this guard does not compute is refused at startup.
  guard::Dataset other;
  other.feature_names = {"entropy", "no_such_feature"};
  for (int i = 0; i < 50; ++i) {
    other.features.insert(other.features.end(), {float(i), float(i % 3)});
    other.labels.push_back(i % 2);
  }
  auto bad = guard::HazardModel::Train(other, {.rounds = 2});
  ASSERT_TRUE(bad.ok());
  ASSERT_TRUE((*bad)->Save(dir + "/bad.json").ok());
  ChildProcess refused(
      std::string(KVG_BIN_DIR) + "/kvguard-guard",
      {"--model", dir + "/bad.json", "--listen", "127.0.0.1:0", "--metrics_listen", ""});
  EXPECT_EQ(refused.Wait(std::chrono::seconds(15)), 1);
  EXPECT_EQ(refused.output().find("listening on"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvguard
