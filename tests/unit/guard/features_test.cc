// File: tests/unit/guard/features_test.cc
#include "guard_sidecar/features.h"

#include <cmath>
#include <random>
#include <set>

#include "gtest/gtest.h"
#include "tests/unit/guard/report_util.h"

namespace kvguard::guard {
namespace {

using testing::MakeReport;
using testing::ReportSpec;

// Feeds one report per token and returns every row.
std::vector<FeatureRow> Feed(SessionFeatures& f, const std::vector<v1::StepReport>& reports) {
  std::vector<FeatureRow> rows(reports.size());
  for (size_t i = 0; i < reports.size(); ++i) f.Update(reports[i], rows[i]);
  return rows;
}

std::vector<v1::StepReport> TokenReports(const std::vector<int32_t>& tokens) {
  std::vector<v1::StepReport> out;
  for (size_t t = 0; t < tokens.size(); ++t) {
    out.push_back(MakeReport("s", {.step = static_cast<uint32_t>(t), .token = tokens[t]}));
  }
  return out;
}

std::vector<v1::StepReport> EntropyReports(const std::vector<float>& entropies) {
  std::vector<v1::StepReport> out;
  for (size_t t = 0; t < entropies.size(); ++t) {
    out.push_back(MakeReport("s", {.step = static_cast<uint32_t>(t), .entropy = entropies[t]}));
  }
  return out;
}

// Occurrences of tokens[t-n+1..t] starting before t-n+1 (overlaps count).
int BruteRepeats(const std::vector<int32_t>& tokens, size_t t, int n) {
  if (t + 1 < static_cast<size_t>(n)) return 0;
  const size_t start = t + 1 - n;
  int count = 0;
  for (size_t s = 0; s < start; ++s) {
    if (std::equal(tokens.begin() + s, tokens.begin() + s + n, tokens.begin() + start)) ++count;
  }
  return count;
}

TEST(FeatureNamesTest, UniqueDocumentedAndAboutForty) {
  std::set<std::string_view> names(kFeatureNames.begin(), kFeatureNames.end());
  EXPECT_EQ(names.size(), static_cast<size_t>(kNumFeatures));
  EXPECT_GE(kNumFeatures, 40);
  for (const FeatureInfo& info : kFeatureInfo) EXPECT_FALSE(info.description.empty()) << info.name;
  EXPECT_EQ(kFeatureNames[kErgoDhW8], "ergo_dh_w8");
  EXPECT_EQ(kFeatureNames[kRepCount20], "rep_count_20");
}

TEST(FeaturesTest, RepetitionCountsMatchBruteForce) {
  std::mt19937 rng(7);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 400; ++i) tokens.push_back(static_cast<int32_t>(rng() % 3));  // many repeats
  // A long exact loop at the end so the 20-gram counts get large too.
  for (int rep = 0; rep < 5; ++rep) {
    for (int i = 0; i < 23; ++i) tokens.push_back(100 + i);
  }
  SessionFeatures f;
  const auto rows = Feed(f, TokenReports(tokens));
  for (size_t t = 0; t < tokens.size(); ++t) {
    ASSERT_EQ(rows[t][kRepCount4], BruteRepeats(tokens, t, 4)) << "t=" << t;
    ASSERT_EQ(rows[t][kRepCount8], BruteRepeats(tokens, t, 8)) << "t=" << t;
    ASSERT_EQ(rows[t][kRepCount20], BruteRepeats(tokens, t, 20)) << "t=" << t;
  }
  EXPECT_EQ(rows.back()[kRepCount20], 4);  // the last 20-gram of the 5th copy
  EXPECT_FLOAT_EQ(rows.back()[kRep4ShareW32], 1.0f);
}

TEST(FeaturesTest, CraftedLoopAndRuns) {
  // 1 2 3 4 5 1 2 3 4 5 1 2 3 4 5 7 7 7
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 7, 7, 7};
  SessionFeatures f;
  const auto rows = Feed(f, TokenReports(tokens));
  EXPECT_EQ(rows[3][kRepCount4], 0);   // 1 2 3 4, first time
  EXPECT_EQ(rows[8][kRepCount4], 1);   // 1 2 3 4 again
  EXPECT_EQ(rows[13][kRepCount4], 2);  // third time
  EXPECT_EQ(rows[12][kRepCount8], 1);  // 4 5 1 2 3 4 5 1 2 3 ... seen once before
  EXPECT_EQ(rows[14][kRepCount20], 0);
  EXPECT_EQ(rows[16][kTokenRun], 2);
  EXPECT_EQ(rows[17][kTokenRun], 3);
  EXPECT_EQ(rows[15][kTokenRun], 1);
  // Repeated 4-grams at t = 8..14: 7 of the 18 tokens.
  EXPECT_NEAR(rows[17][kRep4ShareW32], 7.0 / 18.0, 1e-6);
}

TEST(FeaturesTest, RollingWindowsOverARamp) {
  std::vector<float> e;
  for (int t = 0; t < 40; ++t) e.push_back(static_cast<float>(t));
  SessionFeatures f;
  const auto rows = Feed(f, EntropyReports(e));
  const FeatureRow& last = rows.back();
  EXPECT_FLOAT_EQ(last[kEntropyMeanW8], 35.5f);
  EXPECT_FLOAT_EQ(last[kEntropyMaxW8], 39.0f);
  EXPECT_NEAR(last[kEntropyStdW8], std::sqrt(63.0 / 12.0), 1e-5);
  EXPECT_FLOAT_EQ(last[kEntropyMeanW16], 31.5f);
  EXPECT_FLOAT_EQ(last[kEntropyMeanW32], 23.5f);
  EXPECT_FLOAT_EQ(last[kEntropyMaxW32], 39.0f);
  EXPECT_NEAR(last[kEntropyStdW32], std::sqrt((32.0 * 32.0 - 1) / 12.0), 1e-4);
  EXPECT_FLOAT_EQ(last[kDeltaEntropy], 1.0f);
  // Partial windows average what is there.
  EXPECT_FLOAT_EQ(rows[3][kEntropyMeanW8], 1.5f);
  EXPECT_FLOAT_EQ(rows[0][kEntropyStdW8], 0.0f);
  EXPECT_FLOAT_EQ(rows[0][kDeltaEntropy], 0.0f);
}

TEST(FeaturesTest, LogprobWindowsTrackTheLeastLikelyToken) {
  std::vector<v1::StepReport> reports;
  for (uint32_t t = 0; t < 20; ++t) {
    auto r = MakeReport("s", {.step = t});
    r.set_chosen_logprob(t == 10 ? -6.0f : -0.5f);
    reports.push_back(r);
  }
  SessionFeatures f;
  const auto rows = Feed(f, reports);
  EXPECT_FLOAT_EQ(rows[12][kLogprobMinW8], -6.0f);
  EXPECT_FLOAT_EQ(rows[19][kLogprobMinW8], -0.5f);  // t=10 left the 8-window
  EXPECT_FLOAT_EQ(rows[19][kLogprobMinW16], -6.0f);
  EXPECT_NEAR(rows[12][kLogprobMeanW8], (7 * -0.5 - 6.0) / 8, 1e-6);
}

TEST(FeaturesTest, ErgoDeltaOnAdjacentWindows) {
  std::vector<float> e(16, 1.0f);
  e.insert(e.end(), 8, 3.0f);                      // t = 16..23 jump to 3
  for (int i = 0; i < 40; ++i) e.push_back(3.0f);  // 64 tokens in all
  SessionFeatures f;
  const auto rows = Feed(f, EntropyReports(e));
  EXPECT_FLOAT_EQ(rows[14][kErgoDhW8], 0.0f);   // fewer than 16 tokens
  EXPECT_FLOAT_EQ(rows[15][kErgoDhW8], 0.0f);   // two flat windows
  EXPECT_FLOAT_EQ(rows[19][kErgoDhW8], 1.0f);   // (4*1 + 4*3)/8 - 1
  EXPECT_FLOAT_EQ(rows[23][kErgoDhW8], 2.0f);   // 3 - 1
  EXPECT_FLOAT_EQ(rows[31][kErgoDhW8], 0.0f);   // 3 - 3
  EXPECT_FLOAT_EQ(rows[62][kErgoDhW32], 0.0f);  // fewer than 64 tokens
  // t = 63: mean(32..63) = 3, mean(0..31) = (16*1 + 16*3)/32 = 2.
  EXPECT_FLOAT_EQ(rows[63][kErgoDhW32], 1.0f);
}

TEST(FeaturesTest, HaltFeaturesOfTopLogprobs) {
  v1::StepReport r = MakeReport("s", {});
  r.clear_top_logprobs();
  for (float l : {std::log(0.5f), std::log(0.3f), std::log(0.2f)}) r.add_top_logprobs(l);
  r.set_chosen_logprob(std::log(0.5f));  // greedy
  SessionFeatures f;
  FeatureRow row;
  f.Update(r, row);
  const double h = -(0.5 * std::log(0.5) + 0.3 * std::log(0.3) + 0.2 * std::log(0.2));
  EXPECT_NEAR(row[kTopkEntropy], h, 1e-5);
  EXPECT_NEAR(row[kTopkHAlts], -(0.6 * std::log(0.6) + 0.4 * std::log(0.4)), 1e-5);
  EXPECT_EQ(row[kRankProxy], 1.0f);
  EXPECT_NEAR(row[kTop1Prob], 0.5, 1e-6);
  EXPECT_NEAR(row[kTop5Prob], 1.0, 1e-6);
  const double pc = 0.5 / 0.8;  // chosen vs runner-up
  EXPECT_NEAR(row[kDecEntropy], -pc * std::log(pc) - (1 - pc) * std::log(1 - pc), 1e-5);
  // A sampled third-ranked token: rank 3, alternatives are the other two.
  r.set_chosen_logprob(std::log(0.2f));
  f.Update(r, row);
  EXPECT_EQ(row[kRankProxy], 3.0f);
  EXPECT_NEAR(row[kTopkHAlts], -(0.625 * std::log(0.625) + 0.375 * std::log(0.375)), 1e-5);
}

TEST(FeaturesTest, NonFiniteInputsGiveFiniteFeatures) {
  v1::StepReport r = MakeReport("s", {});
  r.set_entropy(NAN);
  r.set_chosen_logprob(-INFINITY);
  r.set_top_logprobs(3, -INFINITY);
  r.set_logit_margin(INFINITY);
  SessionFeatures f;
  FeatureRow row;
  for (int i = 0; i < 3; ++i) {
    f.Update(r, row);
    for (int k = 0; k < kNumFeatures; ++k) ASSERT_TRUE(std::isfinite(row[k])) << kFeatureNames[k];
  }
}

TEST(FeaturesTest, ThinkingWords) {
  EXPECT_TRUE(IsThinkingWord(" So"));
  EXPECT_TRUE(IsThinkingWord("Wait,"));
  EXPECT_TRUE(IsThinkingWord(" therefore"));
  EXPECT_TRUE(IsThinkingWord("hmm"));
  EXPECT_FALSE(IsThinkingWord(" sober"));
  EXPECT_FALSE(IsThinkingWord(""));
  EXPECT_FALSE(IsThinkingWord(" 42"));
  SessionFeatures f;
  FeatureRow row;
  f.Update(MakeReport("s", {.step = 0, .text = " So"}), row);
  EXPECT_EQ(row[kThinking], 1.0f);
  f.Update(MakeReport("s", {.step = 1, .text = " apples"}), row);
  EXPECT_EQ(row[kThinking], 0.0f);
  f.Update(MakeReport("s", {.step = 2, .text = " wait"}), row);
  EXPECT_EQ(row[kThinkingW32], 2.0f);
  EXPECT_TRUE(f.last_is_thinking());
}

TEST(FeaturesTest, PositionCacheAndModeFeatures) {
  SessionFeatures f({.requested_ratio = 0.75, .prompt_tokens = 10, .max_new_tokens = 100});
  FeatureRow row;
  f.Update(MakeReport("s", {.step = 0, .ratio = 0.75}), row);  // no kv totals yet
  EXPECT_EQ(f.last_position(), 10);                            // prompt_tokens + step
  EXPECT_EQ(row[kRetainedFrac], 1.0f);
  for (uint32_t t = 1; t <= 4; ++t) {
    f.Update(MakeReport("s", {.step = t,
                              .total_tokens = 10 + t,
                              .retained_tokens = 4,
                              .ratio = 0.75,
                              .mode = t >= 3 ? v1::MODE_ALERT : v1::MODE_NORMAL}),
             row);
  }
  EXPECT_EQ(f.last_position(), 14);
  EXPECT_FLOAT_EQ(row[kPosition], 4);
  EXPECT_FLOAT_EQ(row[kPositionFrac], 0.04f);
  EXPECT_FLOAT_EQ(row[kRetainedFrac], 4.0f / 14.0f);
  EXPECT_FLOAT_EQ(row[kRequestedRatio], 0.75f);
  EXPECT_FLOAT_EQ(row[kKvRatio], 0.75f);
  EXPECT_FLOAT_EQ(row[kKvBytes], 4000);
  EXPECT_EQ(row[kMode], static_cast<float>(v1::MODE_ALERT));
  EXPECT_EQ(row[kStepsSinceModeChange], 1);  // ALERT since t=3
}

TEST(FeaturesTest, DeterministicForTheSameReports) {
  std::mt19937 rng(3);
  std::vector<v1::StepReport> reports;
  for (uint32_t t = 0; t < 200; ++t) {
    reports.push_back(MakeReport("s", {.step = t,
                                       .token = static_cast<int32_t>(rng() % 50),
                                       .entropy = static_cast<float>(rng() % 100) / 20.0f}));
  }
  SessionFeatures a, b;
  EXPECT_EQ(Feed(a, reports), Feed(b, reports));
}

// ---- schemas ------------------------------------------------------------------------------

TEST(FeatureSchemaTest, ExclusionRemovesExactlyTheNamedColumns) {
  auto schema = FeatureSchema::Excluding({"entropy", "kv_ratio"});
  ASSERT_TRUE(schema.ok()) << schema.status();
  EXPECT_EQ(schema->size(), static_cast<size_t>(kNumFeatures - 2));
  FeatureRow row;
  for (int i = 0; i < kNumFeatures; ++i) row[i] = static_cast<float>(i);
  std::vector<float> out(schema->size());
  schema->Project(row, out.data());
  std::vector<float> expected;
  for (int i = 0; i < kNumFeatures; ++i) {
    if (i != kEntropy && i != kKvRatio) expected.push_back(static_cast<float>(i));
  }
  EXPECT_EQ(out, expected);
  for (const auto& n : schema->names()) {
    EXPECT_NE(n, "entropy");
    EXPECT_NE(n, "kv_ratio");
  }
  // Many rows at once give the same columns.
  std::vector<float> two(2 * kNumFeatures);
  std::copy(row.begin(), row.end(), two.begin());
  std::copy(row.begin(), row.end(), two.begin() + kNumFeatures);
  auto projected = schema->ProjectRows(two);
  EXPECT_EQ(std::vector<float>(projected.begin() + schema->size(), projected.end()), expected);
}

TEST(FeatureSchemaTest, Ablations) {
  auto groups = [](const FeatureSchema& s) {
    std::set<FeatureGroup> g;
    for (Feature f : s.columns()) g.insert(kFeatureInfo[f].group);
    return g;
  };
  EXPECT_EQ(FeatureSchema::ForAblation("full")->size(), static_cast<size_t>(kNumFeatures));
  auto no_ratio = *FeatureSchema::ForAblation("no_ratio");
  EXPECT_FALSE(groups(no_ratio).count(FeatureGroup::kCache));
  EXPECT_FALSE(no_ratio.Contains(kKvRatio));
  EXPECT_FALSE(no_ratio.Contains(kRequestedRatio));
  EXPECT_TRUE(no_ratio.Contains(kRepCount4));
  auto no_rep = *FeatureSchema::ForAblation("no_repetition");
  EXPECT_FALSE(groups(no_rep).count(FeatureGroup::kRepetition));
  EXPECT_TRUE(no_rep.Contains(kKvRatio));
  auto logit = *FeatureSchema::ForAblation("logit_only");
  EXPECT_EQ(groups(logit), (std::set<FeatureGroup>{FeatureGroup::kLogit, FeatureGroup::kRolling}));
  EXPECT_FALSE(FeatureSchema::ForAblation("no_such").ok());
}

TEST(FeatureSchemaTest, UnknownOrRepeatedNamesAreErrors) {
  EXPECT_FALSE(FeatureSchema::Excluding({"entropi"}).ok());
  EXPECT_FALSE(FeatureSchema::Excluding({"group:nope"}).ok());
  EXPECT_FALSE(FeatureSchema::FromNames({"entropy", "entropy"}).ok());
  auto bad = FeatureSchema::FromNames({"entropy", "x0"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("x0"), std::string_view::npos);
  auto ok = FeatureSchema::FromNames({"top1_prob", "entropy"});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->columns(), (std::vector<Feature>{kTop1Prob, kEntropy}));
}

}  // namespace
}  // namespace kvguard::guard
