// The research pipeline's methodology pieces: token labels, the prompt-level
// split, and the prompt sets (arith and GSM8K) the sweep and evaluate share.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "nlohmann/json.hpp"
#include "research/pipeline/predictor.h"
#include "research/pipeline/traces.h"
#include "research/prompt_set.h"

namespace kvguard::research {
namespace {

Trace MakeTrace(const std::string& prompt, bool catastrophic, int64_t onset, int64_t tokens,
                const std::string& compressor = "snapkv") {
  Trace t;
  t.prompt_id = prompt;
  t.compressor = compressor;
  t.catastrophic = catastrophic;
  t.onset = onset;
  t.tokens = tokens;
  return t;
}

TEST(LabelTest, PositiveFromHorizonBeforeOnsetOn) {
  const Trace looped = MakeTrace("p", true, 50, 120);
  for (int64_t i = 0; i < 120; ++i) {
    EXPECT_EQ(TokenLabel(looped, i, 32), i >= 18) << i;
    EXPECT_EQ(PreOnset(looped, i), i < 50) << i;
  }
  // Onset at 10 with H = 32: every token is within the horizon.
  const Trace early = MakeTrace("p", true, 10, 40);
  for (int64_t i = 0; i < 40; ++i) EXPECT_TRUE(TokenLabel(early, i, 32));
  // A clean trace is negative everywhere and all of it is pre-onset.
  const Trace clean = MakeTrace("p", false, -1, 80);
  for (int64_t i = 0; i < 80; ++i) {
    EXPECT_FALSE(TokenLabel(clean, i, 32));
    EXPECT_TRUE(PreOnset(clean, i));
  }
  // Catastrophic without a token onset carries no positive token.
  EXPECT_FALSE(TokenLabel(MakeTrace("p", true, -1, 10), 5, 32));
}

TEST(SplitTest, EveryPromptInOneSetStratifiedAndDeterministic) {
  std::vector<Trace> traces;
  for (int p = 0; p < 200; ++p) {
    const std::string id = "arith-test-" + std::to_string(p);
    const bool fails = p % 4 == 0;  // 50 failing prompts, 150 clean
    traces.push_back(MakeTrace(id, false, -1, 10, "none"));
    for (double r : {0.5, 0.875}) {
      Trace t = MakeTrace(id, fails && r > 0.6, fails && r > 0.6 ? 5 : -1, 10);
      t.ratio = r;
      traces.push_back(t);
    }
  }
  const auto split = SplitPrompts(traces, 7);
  ASSERT_EQ(split.size(), 200u);  // one entry per prompt id: no id in two sets
  std::map<PromptSet, int> total, failing;
  for (const auto& [id, set] : split) {
    ++total[set];
    failing[set] += std::stoi(id.substr(11)) % 4 == 0;
  }
  EXPECT_EQ(total[PromptSet::kTest], 40);
  EXPECT_EQ(total[PromptSet::kVal], 40);
  EXPECT_EQ(total[PromptSet::kTrain], 120);
  // Stratified: each set has the failing share of the whole (1/4).
  EXPECT_EQ(failing[PromptSet::kTest], 10);
  EXPECT_EQ(failing[PromptSet::kVal], 10);
  EXPECT_EQ(failing[PromptSet::kTrain], 30);
  EXPECT_EQ(SplitPrompts(traces, 7), split);
  EXPECT_NE(SplitPrompts(traces, 8), split);
}

// The prefill's evicted attention survives a record's round trip; records
// written before the field existed read as 0.
TEST(TraceRecordTest, PrefillEvictedAttentionRoundTripsAndDefaultsToZero) {
  Trace t{.prompt_id = "p1", .compressor = "snapkv", .ratio = 0.875, .outcome = "correct"};
  t.prefill_evicted_attention = 2.25;
  auto back = TraceFromJson(TraceToJson(t));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_DOUBLE_EQ(back->prefill_evicted_attention, 2.25);
  nlohmann::json old = TraceToJson(t);
  old.erase("prefill_evicted_attention");
  auto before = TraceFromJson(old);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->prefill_evicted_attention, 0.0);
}

TEST(PromptSetTest, ArithMatchesTheGenerator) {
  PromptSetSpec spec{.first = 3, .count = 4};
  auto prompts = LoadPrompts(spec);
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  auto direct = GenerateProblems(spec.problem_options, Split::kTest, 3, 4);
  ASSERT_TRUE(direct.ok());
  ASSERT_EQ(prompts->size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ((*prompts)[i].id, (*direct)[i].id);
    EXPECT_EQ((*prompts)[i].prompt, (*direct)[i].prompt);
  }
  EXPECT_TRUE(spec.StopStrings().empty());
}

TEST(PromptSetTest, Gsm8kFewShotPrompts) {
  PromptSetSpec spec{.dataset = "gsm8k",
                     .data_dir = std::string(KVG_TEST_DATA_DIR) + "/gsm8k",
                     .shots = 2,
                     .split = Split::kTest,
                     .first = 1,
                     .count = 3};
  auto prompts = LoadPrompts(spec);
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  ASSERT_EQ(prompts->size(), 3u);
  const Problem& p = (*prompts)[0];
  EXPECT_EQ(p.id, "gsm8k-test-000001");
  EXPECT_EQ(p.answer, 3);  // "A robe takes 2 bolts ... #### 3"
  EXPECT_EQ((*prompts)[1].answer, 70000);
  // Two worked examples from train, annotations stripped, then the question.
  EXPECT_EQ(p.prompt.rfind("Question: Natalia sold clips", 0), 0u);
  EXPECT_NE(p.prompt.find("Natalia sold 48/2 = 24 clips in May."), std::string::npos);
  EXPECT_EQ(p.prompt.find("<<"), std::string::npos);
  EXPECT_NE(p.prompt.find("#### 72\n\n"), std::string::npos);
  EXPECT_EQ(p.prompt.substr(p.question_begin_char, 19), "Question: A robe ta");
  EXPECT_TRUE(p.prompt.ends_with("\nAnswer:"));
  EXPECT_EQ(spec.StopStrings(), std::vector<std::string>{"\n\nQuestion:"});
  // The manifest round trip rebuilds the same prompts.
  auto again = PromptSetFromJson(ToJson(spec));
  ASSERT_TRUE(again.ok());
  auto rebuilt = LoadPrompts(*again);
  ASSERT_TRUE(rebuilt.ok());
  EXPECT_EQ((*rebuilt)[2].prompt, (*prompts)[2].prompt);
  // Train/val come from train.jsonl past the shots; ids name the line.
  auto val = LoadPrompts({.dataset = "gsm8k",
                          .data_dir = spec.data_dir,
                          .shots = 2,
                          .split = Split::kVal,
                          .count = 1});
  ASSERT_TRUE(val.ok()) << val.status();
  EXPECT_EQ((*val)[0].id, "gsm8k-val-000011");
}

TEST(PromptSetTest, Gsm8kBadInputsAreErrors) {
  const std::string dir = std::string(KVG_TEST_DATA_DIR) + "/gsm8k";
  EXPECT_EQ(LoadPrompts({.dataset = "gsm8k", .data_dir = dir, .count = 7}).status().code(),
            absl::StatusCode::kOutOfRange);  // 6 test lines
  EXPECT_EQ(LoadPrompts({.dataset = "gsm8k", .data_dir = "/nonexistent"}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadPrompts({.dataset = "squad"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StripCalculatorAnnotations("a <<1+2=3>>3 b <<unclosed"), "a 3 b <<unclosed");
}

}  // namespace
}  // namespace kvguard::research
