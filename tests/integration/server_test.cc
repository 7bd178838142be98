// kvguard-server as a real process on loopback, driven by the project's C++
// client: streaming, concurrency, cancellation, deadlines, bad requests,
// back-pressure, health, metrics and draining.
#include <gtest/gtest.h>

#include <future>
#include <nlohmann/json.hpp>
#include <set>

#include "services/client/generation_client.h"
#include "tests/integration/process.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard {
namespace {

using client::GenerationClient;
using testing::ChildProcess;

struct Server {
  std::unique_ptr<ChildProcess> process;
  std::string address;
  int metrics_port = 0;
};

Server StartServer(const std::string& model, std::vector<std::string> extra = {}) {
  Server s;
  s.metrics_port = testing::FreePort();
  std::vector<std::string> args = {
      "--model",          model,
      "--listen",         "127.0.0.1:0",
      "--metrics_listen", "127.0.0.1:" + std::to_string(s.metrics_port)};
  args.insert(args.end(), extra.begin(), extra.end());
  s.process = std::make_unique<ChildProcess>(std::string(KVG_BIN_DIR) + "/kvguard-server", args);
  auto port = s.process->WaitFor("listening on 127\\.0\\.0\\.1:([0-9]+)", std::chrono::seconds(30));
  EXPECT_TRUE(port.has_value()) << s.process->output();
  s.address = "127.0.0.1:" + port.value_or("0");
  return s;
}

v1::GenerateRequest Request(const std::string& text, int max_new, double temperature = 0,
                            uint64_t seed = 0) {
  v1::GenerateRequest r;
  r.set_text(text);
  r.mutable_stopping()->set_max_new_tokens(max_new);
  r.mutable_stopping()->set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(static_cast<float>(temperature));
  r.mutable_sampling()->mutable_seed()->set_value(seed);
  return r;
}

v1::GenerateRequest IdsRequest(std::vector<int32_t> ids, int max_new) {
  v1::GenerateRequest r;
  for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
  r.mutable_stopping()->set_max_new_tokens(max_new);
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

std::vector<int32_t> CliGenerate(const std::string& model, const std::string& prompt, int n,
                                 double t, int seed) {
  const std::string cmd = std::string(KVG_BIN_DIR) + "/kvguard generate --model " + model +
                          " --prompt '" + prompt + "' --max-new-tokens " + std::to_string(n) +
                          " --ignore-eos --temperature " + std::to_string(t) + " --seed " +
                          std::to_string(seed) + " --json";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, k);
  pclose(p);
  return nlohmann::json::parse(out)["output_ids"].get<std::vector<int32_t>>();
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ =
        new Server(StartServer(testing::DataPath("models/tiny-qwen2"), {"--max_concurrent", "16"}));
  }
  static void TearDownTestSuite() { delete server_; }
  static Server* server_;
};
Server* ServerTest::server_ = nullptr;

TEST_F(ServerTest, HealthModelInfoAndCompressors) {
  GenerationClient c(server_->address);
  EXPECT_EQ(c.Health().value_or("?"), "SERVING");
  auto info = c.GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->family(), "qwen2");
  EXPECT_EQ(info->vocab_size(), 700);
  auto list = c.ListCompressors();
  ASSERT_TRUE(list.ok());
  EXPECT_GE(list->compressors_size(), 10);
}

// The server runs f32 matmuls on the BLAS scripts/install_deps.sh selects and, with
// that library loaded, still serves /metrics: OpenBLAS's static TLS kept civetweb's
// 100 KB-stack worker threads from starting until common/thread_stack_floor.cc,
// and Debian's reference BLAS is ~30x slower.
TEST_F(ServerTest, RunsOnOpenBlasAndServesMetrics) {
  auto info = GenerationClient(server_->address).GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->dtype(), "f32");
  EXPECT_EQ(info->blas().rfind("OpenBLAS", 0), 0u)
      << "kvguard-server runs on '" << info->blas()
      << "'; scripts/install_deps.sh selects OpenBLAS as libblas.so.3";
  const std::string text = testing::HttpGet(server_->metrics_port, "/metrics");
  EXPECT_NE(text.find("kvguard_queue_depth"), std::string::npos) << text.substr(0, 300);
}

TEST_F(ServerTest, SameIdsAsTheCliWithTheSameSeed) {
  const std::string model = testing::DataPath("models/tiny-qwen2");
  GenerationClient c(server_->address);
  for (auto [t, seed] : std::vector<std::pair<double, int>>{{0.0, 0}, {0.9, 11}}) {
    auto out = c.Generate(Request("Tom has 3 apples.", 12, t, seed));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->token_ids, CliGenerate(model, "Tom has 3 apples.", 12, t, seed));
    EXPECT_EQ(out->complete.usage().completion_tokens(), 12u);
    EXPECT_EQ(out->complete.finish_reason(), v1::FINISH_REASON_LENGTH);
  }
}

// The server applies no-repeat n-gram blocking as the CLI does: the same ids, and no generated
// bigram twice (greedy, the tiny random model repeats 8 bigrams in 200 tokens without it).
TEST_F(ServerTest, NoRepeatNgramMatchesTheCliAndNeverRepeats) {
  GenerationClient c(server_->address);
  auto plain = c.Generate(Request("Tom has 3 apples.", 200));
  auto request = Request("Tom has 3 apples.", 200);
  request.mutable_sampling()->set_no_repeat_ngram(2);
  auto blocked = c.Generate(request);
  ASSERT_TRUE(plain.ok() && blocked.ok());
  auto repeated_bigrams = [](const std::vector<int32_t>& ids) {
    std::set<std::pair<int32_t, int32_t>> seen;
    size_t repeats = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i)
      repeats += !seen.insert({ids[i], ids[i + 1]}).second;
    return repeats;
  };
  EXPECT_GT(repeated_bigrams(plain->token_ids), 0u);
  EXPECT_EQ(repeated_bigrams(blocked->token_ids), 0u);
  const std::string cmd = std::string(KVG_BIN_DIR) + "/kvguard generate --model " +
                          testing::DataPath("models/tiny-qwen2") +
                          " --prompt 'Tom has 3 apples.' --max-new-tokens 200 --ignore-eos"
                          " --no-repeat-ngram 2 --json";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t k; (k = fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, k);
  pclose(p);
  EXPECT_EQ(blocked->token_ids,
            nlohmann::json::parse(out)["output_ids"].get<std::vector<int32_t>>());
}

TEST_F(ServerTest, SixteenConcurrentStreamsAreIndependent) {
  GenerationClient c(server_->address);
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 16; ++i)
    reqs.push_back(Request("Lily has " + std::to_string(i) + " eggs.", 16 + i, 0.7, 100 + i));
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : reqs) alone.push_back(c.Generate(r).value().token_ids);
  std::vector<std::future<absl::StatusOr<client::GenerateOutcome>>> futures;
  for (const auto& r : reqs) {
    futures.push_back(std::async(
        std::launch::async, [&, r] { return GenerationClient(server_->address).Generate(r); }));
  }
  for (int i = 0; i < 16; ++i) {
    auto out = futures[i].get();
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->token_ids, alone[i]) << "stream " << i;
    EXPECT_EQ(out->token_ids.size(), size_t(16 + i));
  }
}

TEST_F(ServerTest, CancellationFreesKvAndDeadlinesExpireCleanly) {
  GenerationClient c(server_->address);
  auto out = c.Generate(Request("Tom has 3 apples.", 400), nullptr, {.cancel_after_chunks = 5});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kCancelled);
  auto deadline = c.Generate(Request("Tom has 3 apples.", 400), nullptr,
                             {.deadline = std::chrono::milliseconds(30)});
  EXPECT_EQ(deadline.status().code(), absl::StatusCode::kDeadlineExceeded);
  // KV held by active sequences returns to zero.
  std::optional<double> held;
  for (int i = 0; i < 100; ++i) {
    held = testing::MetricValue(testing::HttpGet(server_->metrics_port, "/metrics"),
                                "kvguard_kv_bytes");
    if (held && *held == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(held.value_or(-1), 0);
  EXPECT_TRUE(c.Generate(Request("still serving", 4)).ok());
}

TEST_F(ServerTest, BadRequestsNameTheFieldAndTheServerKeepsServing) {
  GenerationClient c(server_->address);
  struct Case {
    std::function<void(v1::GenerateRequest&)> edit;
    std::string field;
  };
  std::vector<Case> cases = {
      {[](auto& r) { r.clear_prompt(); }, "prompt"},
      {[](auto& r) { r.set_text(""); }, "prompt.text"},
      {[](auto& r) { r.mutable_token_ids()->Clear(); }, "prompt"},
      {[](auto& r) { r.mutable_token_ids()->add_ids(700); }, "prompt.token_ids[0]"},
      {[](auto& r) { r.mutable_token_ids()->add_ids(-1); }, "prompt.token_ids[0]"},
      {[](auto& r) { r.mutable_token_ids()->mutable_ids()->Resize(600, 5); }, "context"},
      {[](auto& r) { r.mutable_stopping()->set_max_new_tokens(0); }, "stopping.max_new_tokens"},
      {[](auto& r) { r.mutable_stopping()->set_max_new_tokens(1u << 21); },
       "stopping.max_new_tokens"},
      {[](auto& r) { r.mutable_stopping()->add_stop(""); }, "stopping.stop[0]"},
      {[](auto& r) { r.mutable_stopping()->add_stop_token_ids(9999); },
       "stopping.stop_token_ids[0]"},
      {[](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); }, "sampling.temperature"},
      {[](auto& r) { r.mutable_sampling()->set_top_k(-3); }, "sampling.top_k"},
      {[](auto& r) { r.mutable_sampling()->mutable_top_p()->set_value(0); }, "sampling.top_p"},
      {[](auto& r) { r.mutable_sampling()->mutable_top_p()->set_value(1.5f); }, "sampling.top_p"},
      {[](auto& r) { r.mutable_sampling()->mutable_repetition_penalty()->set_value(-1); },
       "sampling.repetition_penalty"},
      {[](auto& r) { r.mutable_sampling()->set_no_repeat_ngram(1); }, "sampling.no_repeat_ngram"},
      {[](auto& r) { r.set_logprobs(50); }, "logprobs"},
      {[](auto& r) { r.mutable_compression()->set_compressor("nope"); },
       "unknown compressor 'nope'"},
      {[](auto& r) {
         r.mutable_compression()->set_compressor("snapkv");
         r.mutable_compression()->mutable_ratio()->set_value(1.0);
       },
       "compression.ratio"},
      {[](auto& r) {
         r.mutable_compression()->set_compressor("snapkv");
         r.mutable_compression()->mutable_ratio()->set_value(-0.1);
       },
       "compression.ratio"},
      {[](auto& r) {
         r.mutable_compression()->set_compressor("snapkv");
         (*r.mutable_compression()->mutable_options())["window"] = "4";
       },
       "no option 'window'"},
      {[](auto& r) {
         r.mutable_compression()->set_compressor("snapkv");
         (*r.mutable_compression()->mutable_options())["window_size"] = "x";
       },
       "window_size"},
      {[](auto& r) { r.mutable_compression()->set_compressor("q2c"); }, "question span"},
      {[](auto& r) {
         r.mutable_compression()->set_compressor("q2c");
         r.mutable_compression()->mutable_question_begin()->set_value(5);
         r.mutable_compression()->mutable_question_end()->set_value(2);
       },
       "question_begin"},
      {[](auto& r) { r.mutable_compression()->mutable_ratio()->set_value(0.5); },
       "needs compression.compressor"},
      {[](auto& r) { r.mutable_compression()->mutable_guard()->set_value(true); },
       "compression.guard"},
      {[](auto& r) { r.set_gold_answer("seven"); }, "gold_answer"},
      {[](auto& r) { r.set_request_id(std::string(300, 'x')); }, "request_id"},
  };
  ASSERT_GE(cases.size(), 20u);
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::GenerateRequest r = Request("Tom has 3 apples.", 8);
    cases[i].edit(r);
    auto out = c.Generate(r);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << "case " << i;
    EXPECT_NE(std::string(out.status().message()).find(cases[i].field), std::string::npos)
        << "case " << i << ": " << out.status().message();
  }
  EXPECT_TRUE(c.Generate(Request("still serving", 4)).ok());
}

TEST_F(ServerTest, MetricsExposeTheDocumentedFamilies) {
  GenerationClient c(server_->address);
  v1::GenerateRequest r = Request("Tom has 3 apples.", 8);
  r.mutable_compression()->set_compressor("knorm");
  r.mutable_compression()->mutable_ratio()->set_value(0.5);
  ASSERT_TRUE(c.Generate(r).ok());
  const std::string text = testing::HttpGet(server_->metrics_port, "/metrics");
  for (const char* name :
       {"kvguard_requests_total", "kvguard_generated_tokens_total", "kvguard_prompt_tokens_total",
        "kvguard_time_to_first_token_seconds_bucket", "kvguard_inter_token_latency_seconds_bucket",
        "kvguard_request_duration_seconds_bucket", "kvguard_decode_step_seconds_bucket",
        "kvguard_batch_size_bucket", "kvguard_queue_depth", "kvguard_active_sequences",
        "kvguard_kv_bytes", "kvguard_kv_retained_fraction_bucket", "kvguard_mode_steps_total",
        "kvguard_generations_total", "kvguard_kv_bytes_saved_total",
        "kvguard_guard_fail_safe_total", "kvguard_requests_rejected_total"}) {
    EXPECT_NE(text.find(name), std::string::npos) << name;
  }
}

TEST(ServerProcessTest, QueueLimitGivesResourceExhausted) {
  Server s = StartServer(testing::ModelsPath("stories260K/stories260K.bin"),
                         {"--max_concurrent", "1", "--max_queue", "1"});
  std::vector<std::future<absl::StatusCode>> calls;
  for (int i = 0; i < 8; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      return GenerationClient(s.address).Generate(IdsRequest({1}, 480)).status().code();
    }));
  }
  int exhausted = 0, ok = 0;
  std::string codes;
  for (auto& f : calls) {
    auto code = f.get();
    codes += absl::StatusCodeToString(code) + " ";
    exhausted += code == absl::StatusCode::kResourceExhausted;
    ok += code == absl::StatusCode::kOk;
  }
  // One running + one queued at a time: most of eight simultaneous calls are refused, none fail
  // otherwise.
  EXPECT_GE(exhausted, 1) << codes;
  EXPECT_GE(ok, 1) << codes;
  EXPECT_EQ(exhausted + ok, 8) << codes;
}

TEST(ServerProcessTest, SigtermDrainsInFlightStreams) {
  Server s = StartServer(testing::ModelsPath("stories260K/stories260K.bin"),
                         {"--drain_grace_ms", "20000"});
  // SIGTERM once the stream is running: the drain's GOAWAY refuses calls that have not started.
  std::promise<void> started;
  auto call = std::async(std::launch::async, [&] {
    bool first = true;
    return GenerationClient(s.address).Generate(IdsRequest({1}, 480), [&](const v1::TokenChunk&) {
      if (first) started.set_value();
      first = false;
    });
  });
  ASSERT_EQ(started.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  s.process->Signal(SIGTERM);
  auto out = call.get();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->token_ids.size(), 480u);
  EXPECT_EQ(s.process->Wait(std::chrono::seconds(20)), 0);
}

}  // namespace
}  // namespace kvguard
