#include "services/engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>
#include <random>

namespace kvguard::engine {
namespace {

TEST(SamplerTest, GreedyPicksArgmaxAndReportsStatistics) {
  Sampler s({});
  std::vector<float> logits = {0.0f, 3.0f, 1.0f, 3.0f - 0.5f};
  SampledToken t = s.Sample(logits, {});
  EXPECT_EQ(t.id, 1);
  EXPECT_NEAR(t.margin, 0.5f, 1e-6);
  double z = std::exp(0.0) + std::exp(3.0) + std::exp(1.0) + std::exp(2.5);
  EXPECT_NEAR(t.logprob, 3.0 - std::log(z), 1e-5);
  double h = 0;
  for (float l : logits) h -= std::exp(l - std::log(z)) * (l - std::log(z));
  EXPECT_NEAR(t.entropy, h, 1e-5);
}

TEST(SamplerTest, TopLogprobsDescending) {
  Sampler s({.logprobs = 3});
  SampledToken t = s.Sample(std::vector<float>{1, 5, 3, 4}, {});
  ASSERT_EQ(t.top_logprobs.size(), 3u);
  EXPECT_EQ(t.top_logprobs[0].id, 1);
  EXPECT_EQ(t.top_logprobs[1].id, 3);
  EXPECT_EQ(t.top_logprobs[2].id, 2);
}

// The one-pass heap against a stable sort: descending, ties to the lower id,
// on rows with many ties (logits drawn from 8 values) and k up to the vocab.
TEST(SamplerTest, TopLogprobsMatchStableSortWithTies) {
  std::mt19937 rng(7);
  for (int32_t k : {1, 5, 20, 258}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> logits(258);
      for (float& x : logits) x = static_cast<float>(rng() % 8) * 0.5f;
      Sampler s({.logprobs = k});
      const SampledToken t = s.Sample(logits, {});
      std::vector<int32_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      ASSERT_EQ(t.top_logprobs.size(), static_cast<size_t>(k));
      for (int32_t i = 0; i < k; ++i) ASSERT_EQ(t.top_logprobs[i].id, order[i]) << "k " << k;
    }
  }
}

TEST(SamplerTest, RepetitionPenaltyFollowsHfRule) {
  // Token 0 (logit 2.0) seen: 2.0 / 4 = 0.5 < token 1's 1.0.
  Sampler s({.repetition_penalty = 4.0});
  EXPECT_EQ(s.Sample(std::vector<float>{2.0f, 1.0f, -1.0f}, std::vector<int32_t>{0}).id, 1);
}

// Generated "1 2 1": a 2-gram rule bans 2 after the trailing 1 (it would repeat "1 2"); the
// prompt's n-grams are not banned, and 0 turns the rule off.
TEST(SamplerTest, NoRepeatNgramBansWhatWouldRepeatAGeneratedNgram) {
  const std::vector<float> logits{0.0f, 1.0f, 5.0f, 4.0f};  // argmax 2, then 3
  const std::vector<int32_t> history{1, 2, /*generated:*/ 1, 2, 1};
  EXPECT_EQ(Sampler({.no_repeat_ngram = 2}).Sample(logits, history, 2).id, 3);
  EXPECT_EQ(Sampler({.no_repeat_ngram = 3}).Sample(logits, history, 2).id, 2);  // "2 1 2" is new
  // Generated "1 2 3 1 2": 3 would repeat "1 2 3"; the next best is 2.
  EXPECT_EQ(
      Sampler({.no_repeat_ngram = 3})
          .Sample(std::vector<float>{0.0f, 1.0f, 4.0f, 5.0f}, std::vector<int32_t>{1, 2, 3, 1, 2})
          .id,
      2);
  EXPECT_EQ(Sampler({.no_repeat_ngram = 4}).Sample(logits, history, 2).id, 2);  // too short
  EXPECT_EQ(Sampler({.no_repeat_ngram = 2}).Sample(logits, history, 4).id, 2);  // "1" only
  EXPECT_EQ(Sampler({}).Sample(logits, history, 2).id, 2);
  SampledToken t = Sampler({.no_repeat_ngram = 2}).Sample(logits, history, 2);
  EXPECT_TRUE(std::isfinite(t.entropy) && std::isfinite(t.logprob));
  EXPECT_FALSE(ValidateSamplingParams({.no_repeat_ngram = 1}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.no_repeat_ngram = -2}).ok());
}

TEST(SamplerTest, SeedReproducibleAndTopKRestricts) {
  std::vector<float> logits = {1, 1, 1, 1, 1, 1, 1, 1};
  auto draw = [&](uint64_t seed, int top_k) {
    Sampler s({.temperature = 1.0, .top_k = top_k, .seed = seed});
    std::vector<int32_t> ids;
    for (int i = 0; i < 200; ++i) ids.push_back(s.Sample(logits, {}).id);
    return ids;
  };
  EXPECT_EQ(draw(7, 0), draw(7, 0));
  EXPECT_NE(draw(7, 0), draw(8, 0));
  std::map<int32_t, int> counts;
  for (int32_t id : draw(3, 3)) counts[id]++;
  EXPECT_EQ(counts.size(), 3u);  // ties kept in index order: ids 0..2
  EXPECT_EQ(counts.rbegin()->first, 2);
}

TEST(SamplerTest, TopPKeepsSmallestNucleus) {
  // Probabilities ~ 0.64, 0.24, 0.09, 0.03: top_p 0.7 keeps the first two only.
  std::vector<float> logits = {3.0f, 2.0f, 1.0f, 0.0f};
  Sampler s({.temperature = 1.0, .top_p = 0.7, .seed = 1});
  std::map<int32_t, int> counts;
  for (int i = 0; i < 2000; ++i) counts[s.Sample(logits, {}).id]++;
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[0], counts[1]);
}

TEST(SamplerTest, ValidationNamesTheField) {
  EXPECT_NE(ValidateSamplingParams({.temperature = -1}).message().find("temperature"),
            std::string::npos);
  EXPECT_NE(ValidateSamplingParams({.top_p = 0}).message().find("top_p"), std::string::npos);
  EXPECT_NE(ValidateSamplingParams({.top_k = -2}).message().find("top_k"), std::string::npos);
  EXPECT_NE(ValidateSamplingParams({.repetition_penalty = 0}).message().find("repetition_penalty"),
            std::string::npos);
  EXPECT_TRUE(ValidateSamplingParams({.temperature = 0.7, .top_k = 40, .top_p = 0.9}).ok());
}

}  // namespace
}  // namespace kvguard::engine
