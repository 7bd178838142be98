// The kvguard CLI contract, exercised on the real binary: outputs other tools
// parse, and one-line errors with a non-zero exit on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "tests/unit/engine/test_util.h"

namespace kvguard {
namespace {

using nlohmann::json;
using testing::DataPath;

struct RunResult {
  int exit_code;
  std::string out;
  std::string err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

RunResult Kvguard(const std::vector<std::string>& args) {
  testing::TempDir tmp;
  std::string cmd = std::string(KVG_BIN_DIR) + "/kvguard";
  for (const auto& a : args) cmd += " " + Quote(a);
  cmd += " 2>" + tmp.File("err");
  FILE* p = popen(cmd.c_str(), "r");
  RunResult r;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = testing::ReadFile(tmp.File("err"));
  return r;
}

TEST(CliTest, TokenizeTextAndIds) {
  auto r =
      Kvguard({"tokenize", "--tokenizer", DataPath("tokenizers/qwen2"), "--text", "Hello world"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["ids"], json({42, 345, 78, 81, 300, 269, 618}));
  r = Kvguard({"tokenize", "--tokenizer", DataPath("tokenizers/qwen2/tokenizer.json"), "--ids",
               "42,345,78,81,300,269,618"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["text"], "Hello world");
}

TEST(CliTest, LogitsOneRowPerPosition) {
  auto r = Kvguard({"logits", "--model", DataPath("models/tiny-llama"), "--ids", "1,2,3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out);
  ASSERT_EQ(j["logits"].size(), 3u);
  EXPECT_EQ(j["logits"][0].size(), 640u);
}

TEST(CliTest, GenerateJsonWithPromptAndIds) {
  auto r = Kvguard({"generate", "--model", DataPath("models/tiny-qwen2"), "--prompt", "Hello",
                    "--max-new-tokens", "5", "--ignore-eos", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out);
  EXPECT_EQ(j["output_ids"].size(), 5u);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_TRUE(j["text"].is_string());
  EXPECT_GT(j["kv_bytes"].get<int64_t>(), 0);
  r = Kvguard({"generate", "--model", testing::ModelsPath("stories260K/stories260K.bin"), "--ids",
               "1", "--max-new-tokens", "8", "--temperature", "0.8", "--seed", "3", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json a = json::parse(r.out);
  auto again =
      Kvguard({"generate", "--model", testing::ModelsPath("stories260K/stories260K.bin"), "--ids",
               "1", "--max-new-tokens", "8", "--temperature", "0.8", "--seed", "3", "--json"});
  EXPECT_EQ(a["output_ids"], json::parse(again.out)["output_ids"]) << "same seed, same tokens";
}

// Each bad input: non-zero exit, a single line on stderr, nothing that looks like a crash.
// Lines of a text file (trace shards are JSON lines).
std::vector<json> JsonLines(const std::string& path) {
  std::vector<json> out;
  std::istringstream in(testing::ReadFile(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(json::parse(line));
  }
  return out;
}

// The research loop in miniature on the bundled model: sweep -> train-predictor
// -> evaluate (offline and live through a real server and guard). The full
// sweep is scripts/research_loop.sh; this shows the commands fit together.
TEST(CliTest, ResearchLoopEndToEndOnTheBundledModel) {
  testing::TempDir tmp;
  const std::string traces = tmp.File("traces"), pred = tmp.File("pred"), eval = tmp.File("eval");
  auto r = Kvguard({"sweep", "--model", testing::ModelsPath("arith-lm"), "--out", traces,
                    "--prompts", "10", "--compressors", "snapkv", "--ratios", "0.875",
                    "--max-new-tokens", "64", "--batch", "10"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json manifest = json::parse(testing::ReadFile(traces + "/manifest.json"));
  EXPECT_EQ(manifest["prompt_set"]["dataset"], "arith");
  EXPECT_EQ(manifest["configs"], json({"none", "snapkv@0.875"}));
  const auto none = JsonLines(traces + "/none.jsonl"),
             snap = JsonLines(traces + "/snapkv@0.875.jsonl");
  ASSERT_EQ(none.size(), 10u);
  ASSERT_EQ(snap.size(), 10u);
  for (const json& t : snap) {
    EXPECT_EQ(t["compressor"], "snapkv");
    EXPECT_TRUE(t["prompt_id"].get<std::string>().starts_with("arith-test-"));
  }
  // Resumable: a second run finds every shard done and rewrites nothing.
  r = Kvguard({"sweep", "--model", testing::ModelsPath("arith-lm"), "--out", traces, "--prompts",
               "10", "--compressors", "snapkv", "--ratios", "0.875", "--max-new-tokens", "64"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(JsonLines(traces + "/snapkv@0.875.jsonl"), snap);

  r = Kvguard({"train-predictor", "--traces", traces, "--out", pred, "--rounds", "20"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(testing::ReadFile(pred + "/report.json"));
  EXPECT_TRUE(std::filesystem::exists(pred + "/hazard.json"));
  EXPECT_TRUE(std::filesystem::exists(pred + "/roc.svg"));
  EXPECT_TRUE(report["ablations"].contains("logit_only"));
  EXPECT_TRUE(report["loco"].contains("snapkv"));
  EXPECT_FALSE(report["loco"].contains("none")) << "uncompressed must never be a CV fold";

  r = Kvguard({"evaluate", "--model", testing::ModelsPath("arith-lm"), "--traces", traces,
               "--predictor", pred, "--out", eval, "--live", "--bin-dir", KVG_BIN_DIR,
               "--max-new-tokens", "64", "--concurrency", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json ev = json::parse(testing::ReadFile(eval + "/evaluation.json"));
  EXPECT_TRUE(std::filesystem::exists(eval + "/evaluation.csv"));
  EXPECT_TRUE(std::filesystem::exists(eval + "/cfr_vs_ratio_snapkv.svg"));
  EXPECT_TRUE(std::filesystem::exists(eval + "/controller.json"));
  EXPECT_NE(ev.dump().find("\"live\""), std::string::npos) << ev.dump();
  // One per-prompt record per live run: static, guarded and guarded without RECOVERY.
  const auto records = JsonLines(eval + "/records.jsonl");
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.size() % 3, 0u);
  std::set<std::string> arms;
  for (const json& rec : records) {
    arms.insert(rec["arm"].get<std::string>());
    EXPECT_GE(rec["savings_integrated"].get<double>(), 0.0);
    EXPECT_LE(rec["savings_integrated"].get<double>(), 1.0);
  }
  EXPECT_EQ(arms, (std::set<std::string>{"static@0.875", "guarded@0.875", "guarded_norec@0.875"}));

  // The frontier: static arms from the sweep, guard arms from the live records.
  const std::string fr = tmp.File("frontier");
  r = Kvguard({"frontier", "--traces", traces, "--records", eval + "/records.jsonl", "--out", fr,
               "--resamples", "200"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json frontier = json::parse(testing::ReadFile(fr + "/frontier.json"));
  ASSERT_EQ(frontier["guard"].size(), 2u) << frontier.dump();
  EXPECT_EQ(frontier["guard"][0]["compressor"], "snapkv");
  EXPECT_TRUE(std::filesystem::exists(fr + "/frontier_cfr_snapkv.svg"));
  EXPECT_NE(r.out.find("Guard policies against the static frontier"), std::string::npos) << r.out;
}

// The same sweep runs unchanged on a Hugging Face checkpoint with GSM8K
// few-shot prompts (here a tiny random Qwen2 and 2 test questions).
TEST(CliTest, SweepOnGsm8kWithAHuggingFaceCheckpoint) {
  testing::TempDir tmp;
  auto r =
      Kvguard({"sweep", "--model", DataPath("models/tiny-qwen2"), "--out", tmp.File("t"),
               "--dataset", "gsm8k", "--data-dir", DataPath("gsm8k"), "--shots", "1", "--prompts",
               "2", "--compressors", "knorm", "--ratios", "0.5", "--max-new-tokens", "6"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json manifest = json::parse(testing::ReadFile(tmp.File("t") + "/manifest.json"));
  EXPECT_EQ(manifest["prompt_set"]["dataset"], "gsm8k");
  EXPECT_EQ(manifest["prompt_set"]["shots"], 1);
  const auto traces = JsonLines(tmp.File("t") + "/knorm@0.5.jsonl");
  ASSERT_EQ(traces.size(), 2u);
  EXPECT_EQ(traces[0]["prompt_id"], "gsm8k-test-000000");
  EXPECT_EQ(traces[0]["tokens"], 6);
  r = Kvguard({"sweep", "--model", DataPath("models/tiny-qwen2"), "--out", tmp.File("u"),
               "--dataset", "gsm8k"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--data-dir"), std::string::npos) << r.err;
}

TEST(CliTest, BadInputsFailWithOneLine) {
  testing::TempDir tmp;
  testing::WriteFile(tmp.File("bad.json"), "{not json");
  testing::WriteFile(tmp.File("trunc.bin"), std::string(20, '\x01'));
  const std::string llama = DataPath("models/tiny-llama");
  std::vector<std::vector<std::string>> cases = {
      {"generate", "--model", "/nonexistent", "--ids", "1"},
      {"logits", "--model", llama, "--ids", "1,99999"},
      {"logits", "--model", llama, "--ids", "1,x"},
      {"logits", "--model", llama},
      {"logits", "--model", llama, "--ids", "1", "--dtype", "f8"},
      {"logits", "--model", llama, "--ids", "1", "--device", "tpu"},
      {"generate", "--model", llama, "--ids", "1", "--bogus-flag", "1"},
      {"generate", "--model", llama, "--ids", "1", "--temperature", "-1"},
      {"generate", "--model", llama, "--ids", "1", "--top-p", "0"},
      {"generate", "--model", llama, "--ids", "1", "--max-new-tokens", "0"},
      {"generate", "--model", testing::ModelsPath("stories260K/stories260K.bin"), "--prompt", "hi"},
      {"generate", "--model", tmp.File("trunc.bin"), "--ids", "1"},
      {"tokenize", "--tokenizer", tmp.File("bad.json"), "--text", "x"},
      {"tokenize", "--tokenizer", DataPath("tokenizers/qwen2"), "--ids", "123456"},
      {"evaluate", "--model", llama, "--traces", "/nonexistent", "--predictor", "/nonexistent",
       "--out", tmp.File("e"), "--fpr-scope", "median"},
      {"sweep", "--model", DataPath("models/tiny-qwen2"), "--out", tmp.File("s"), "--dataset",
       "squad"},
      {"nosuchcommand"},
  };
  for (const auto& c : cases) {
    auto r = Kvguard(c);
    std::string joined;
    for (const auto& a : c) joined += a + " ";
    EXPECT_NE(r.exit_code, 0) << joined;
    EXPECT_NE(r.exit_code, -1) << joined << " crashed";
    if (c[0] != "nosuchcommand") {
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << joined << "\n" << r.err;
    }
  }
}

}  // namespace
}  // namespace kvguard
