// File: tests/unit/research/catastrophe_test.cc
#include "guard_sidecar/catastrophe.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "research/rng.h"
#include "research/stats.h"

namespace kvguard::guard {
namespace {

using research::BootstrapDifference;
using research::NewcombeDifference;
using research::RateCI;
using research::SplitMix64;
using research::WilsonInterval;

using Tokens = std::vector<int32_t>;

// Random tokens from [lo, lo + vocab): separate ranges keep crafted blocks
// from matching the random background by accident.
Tokens Random(int64_t n, int32_t lo, int32_t vocab, uint64_t seed) {
  SplitMix64 rng(seed);
  Tokens t(static_cast<size_t>(n));
  for (int32_t& x : t) x = lo + static_cast<int32_t>(rng.Index(vocab));
  return t;
}

Tokens Repeat(const Tokens& block, int times) {
  Tokens out;
  for (int i = 0; i < times; ++i) out.insert(out.end(), block.begin(), block.end());
  return out;
}

Tokens Concat(std::initializer_list<Tokens> parts) {
  Tokens out;
  for (const Tokens& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// ---- DetectLoop ----------------------------------------------------------------

TEST(DetectLoopTest, BlockOfTwentyFiveRepeatedThreeTimes) {
  const Tokens block = Random(25, 1000, 1000, 1);
  LoopResult r = DetectLoop(Repeat(block, 3));
  EXPECT_TRUE(r.looped);
  EXPECT_EQ(r.onset, 25);
  EXPECT_EQ(r.period, 25);

  // Behind a 30-token prefix and before a tail: onset = start of 2nd copy.
  r = DetectLoop(Concat({Random(30, 0, 500, 2), Repeat(block, 3), Random(40, 0, 500, 3)}));
  EXPECT_TRUE(r.looped);
  EXPECT_EQ(r.onset, 55);
  EXPECT_EQ(r.period, 25);
}

TEST(DetectLoopTest, ShortStutterIsNotALoop) {
  // guard.md §5: a 20-window must be seen 3 times. A 10-token phrase said 3
  // times spans 30 tokens, where each 20-window occurs at most twice.
  const Tokens phrase = Random(10, 1000, 1000, 4);
  const Tokens prefix = Random(30, 0, 500, 5);
  const Tokens suffix = Random(30, 0, 500, 6);
  EXPECT_FALSE(DetectLoop(Concat({prefix, Repeat(phrase, 3), suffix})).looped);
  // Said 4 times (40 tokens) it is a loop, with onset at the 2nd copy.
  const LoopResult r = DetectLoop(Concat({prefix, Repeat(phrase, 4), suffix}));
  EXPECT_TRUE(r.looped);
  EXPECT_EQ(r.onset, 40);
  EXPECT_EQ(r.period, 10);
}

TEST(DetectLoopTest, SingleTokenStutter) {
  // A single-token stutter like the stories260K model's "431" x13 (guard.md
  // §5.4; here token 600, outside the prefix's range) is not a loop...
  const Tokens prefix = Random(30, 0, 500, 7);
  EXPECT_FALSE(DetectLoop(Concat({prefix, Tokens(13, 600), prefix})).looped);
  EXPECT_FALSE(DetectLoop(Concat({prefix, Tokens(21, 600)})).looped);
  // ... but 22 copies ("ToToTo...") hold one 20-window three times.
  const LoopResult r = DetectLoop(Concat({prefix, Tokens(22, 600)}));
  EXPECT_TRUE(r.looped);
  EXPECT_EQ(r.onset, 31);
  EXPECT_EQ(r.period, 1);
}

TEST(DetectLoopTest, BlockSeenTwiceIsNotALoop) {
  const Tokens block = Random(300, 0, 500, 8);
  EXPECT_FALSE(DetectLoop(Repeat(block, 2)).looped);
  EXPECT_TRUE(DetectLoop(Repeat(block, 2), 20, 2).looped);
}

TEST(DetectLoopTest, FirstWindowToReachTheCountDecides) {
  // X appears at 0 and 100 (an early 2nd occurrence) but only reaches 3 copies
  // at 400; Y reaches 3 copies first, at 250. As in the prototype, the onset is
  // Y's 2nd occurrence, not X's.
  const Tokens x = Random(25, 2000, 1000, 9);
  const Tokens y = Random(25, 3000, 1000, 10);
  const Tokens seq = Concat({x, Random(75, 0, 500, 11), x, Random(75, 0, 500, 12), Repeat(y, 3),
                             Random(125, 0, 500, 13), x});
  const LoopResult r = DetectLoop(seq);
  EXPECT_TRUE(r.looped);
  EXPECT_EQ(r.onset, 225);
  EXPECT_EQ(r.period, 25);
}

TEST(DetectLoopTest, CustomWindowAndBadParameters) {
  const Tokens seq = Concat({Random(10, 100, 500, 14), Repeat({7, 8, 9}, 3)});
  const LoopResult r = DetectLoop(seq, /*window=*/3, /*repeats=*/3);
  EXPECT_TRUE(r.looped);
  EXPECT_EQ(r.onset, 13);
  EXPECT_EQ(r.period, 3);
  EXPECT_FALSE(DetectLoop(seq, 0, 3).looped);
  EXPECT_FALSE(DetectLoop(seq, 3, 1).looped);
  EXPECT_FALSE(DetectLoop({}).looped);
  EXPECT_EQ(DetectLoop({}).onset, -1);
  EXPECT_FALSE(DetectLoop(Tokens(19, 5)).looped);
}

TEST(DetectLoopTest, NoFalsePositiveOnRandomTokens) {
  for (uint64_t seed = 0; seed < 5; ++seed) {
    EXPECT_FALSE(DetectLoop(Random(5000, 0, 512, 100 + seed)).looped);
  }
}

TEST(DetectLoopTest, TokenIdZeroAndNegativeIdsAreHandled) {
  EXPECT_TRUE(DetectLoop(Tokens(22, 0)).looped);
  EXPECT_FALSE(DetectLoop(Concat({Tokens(20, 0), Tokens(20, -1)})).looped);
}

TEST(DetectLoopTest, LongSequencesAreFast) {
  const Tokens random = Random(100'000, 0, 32'000, 15);
  const Tokens half = Random(50'000, 0, 32'000, 16);
  const Tokens twice = Repeat(half, 2);  // 50k verified window matches, no loop
  const Tokens late =
      Concat({Random(90'000, 0, 32'000, 17), Repeat(Random(40, 40'000, 100, 18), 250)});
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(DetectLoop(random).looped);
  EXPECT_FALSE(DetectLoop(twice).looped);
  const LoopResult r = DetectLoop(late);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(r.looped);
  EXPECT_EQ(r.onset, 90'040);
  EXPECT_EQ(r.period, 40);
  EXPECT_LT(seconds, 1.0);  // ~0.05 s measured; generous for a loaded CI box
}

// ---- ProgressStallOnset ----------------------------------------------------------

TEST(ProgressStallOnsetTest, ProgressToTheEndGivesLastToken) {
  EXPECT_EQ(ProgressStallOnset(Random(300, 0, 500, 19)), 299);
  EXPECT_EQ(ProgressStallOnset(Random(10, 0, 500, 20)), 9);  // too short to judge
  EXPECT_EQ(ProgressStallOnset({}), 0);
}

TEST(ProgressStallOnsetTest, VerbatimReplayStartsTheStall) {
  const Tokens r = Random(100, 0, 500, 21);
  // Replaying r[20..100) re-emits only windows already seen: the last new
  // window starts at 99, so the stall begins at 100.
  const Tokens seq = Concat({r, Tokens(r.begin() + 20, r.end())});
  EXPECT_EQ(ProgressStallOnset(seq), 100);
  // For a periodic tail it coincides with the loop onset.
  const Tokens loop = Concat({Random(50, 0, 500, 22), Repeat(Random(7, 1000, 100, 23), 12)});
  EXPECT_EQ(ProgressStallOnset(loop), DetectLoop(loop).onset);
}

// ---- ExtractAnswer -------------------------------------------------------------

TEST(ExtractAnswerTest, Cases) {
  EXPECT_EQ(ExtractAnswer("3 + 5 = 8.\nAnswer: 8"), 8);
  EXPECT_EQ(ExtractAnswer("Answer: 3\nwait\nAnswer: 12"), 12);  // last one wins
  EXPECT_EQ(ExtractAnswer("Answer: 1,234"), 1234);
  EXPECT_EQ(ExtractAnswer("Answer: 1,234,567."), 1234567);
  EXPECT_EQ(ExtractAnswer("Answer: -5"), -5);
  EXPECT_EQ(ExtractAnswer("Answer:42"), 42);
  EXPECT_EQ(ExtractAnswer("Answer:   $1,200 dollars"), 1200);
  EXPECT_EQ(ExtractAnswer("**Answer:** 42"), 42);
  EXPECT_EQ(ExtractAnswer("Answer: 18.00"), 18);
  EXPECT_EQ(ExtractAnswer("Answer: 8."), 8);
  EXPECT_EQ(ExtractAnswer("Answer: 3, 4"), 3);                    // a list, not 34
  EXPECT_EQ(ExtractAnswer("Answer: 1,23"), 1);                    // not a thousands group
  EXPECT_EQ(ExtractAnswer("She pays 5 * 3 = 15.\n#### 15"), 15);  // GSM8K
  EXPECT_EQ(ExtractAnswer("#### 1,000\n"), 1000);
  EXPECT_EQ(ExtractAnswer("Answer: 5\n#### 6"), 6);  // the later marker wins
  EXPECT_EQ(ExtractAnswer("#### 6\nAnswer: 5"), 5);
  EXPECT_EQ(ExtractAnswer("no answer here, 12"), std::nullopt);
  EXPECT_EQ(ExtractAnswer(""), std::nullopt);
  EXPECT_EQ(ExtractAnswer("Answer: 7.5"), std::nullopt);
  EXPECT_EQ(ExtractAnswer("Answer: 8\nAnswer:"), std::nullopt);  // truncated last
  EXPECT_EQ(ExtractAnswer("Answer: none"), std::nullopt);
  EXPECT_EQ(ExtractAnswer("Answer: 12345678901234567890"), std::nullopt);
}

// ---- Classify --------------------------------------------------------------------

TEST(ClassifyTest, Correct) {
  const Outcome o = Classify(Random(60, 0, 500, 30), "3 + 5 = 8.\nAnswer: 8", false, true, 8);
  EXPECT_EQ(o.kind, OutcomeKind::kCorrect);
  EXPECT_TRUE(o.correct);
  EXPECT_FALSE(o.wrong_answer || o.catastrophic || o.looped || o.non_terminated);
  EXPECT_EQ(o.onset, -1);
  EXPECT_EQ(o.answer, 8);
}

TEST(ClassifyTest, WrongAnswer) {
  Outcome o = Classify(Random(60, 0, 500, 31), "Answer: 9", false, true, 8);
  EXPECT_EQ(o.kind, OutcomeKind::kWrongAnswer);
  EXPECT_TRUE(o.wrong_answer);
  EXPECT_FALSE(o.correct || o.catastrophic);
  // Stopped (EOS) without any answer: wrong, not a catastrophe.
  o = Classify(Random(60, 0, 500, 32), "I do not know.", false, true, 8);
  EXPECT_EQ(o.kind, OutcomeKind::kWrongAnswer);
  EXPECT_FALSE(o.catastrophic);
  // Ran out of tokens but had already answered: graded, not non-terminated.
  o = Classify(Random(60, 0, 500, 33), "Answer: 7 and then", true, false, 8);
  EXPECT_EQ(o.kind, OutcomeKind::kWrongAnswer);
  EXPECT_FALSE(o.non_terminated);
}

TEST(ClassifyTest, Loop) {
  const Tokens gen = Concat({Random(40, 0, 500, 34), Repeat(Random(5, 1000, 100, 35), 40)});
  const Outcome o = Classify(gen, "To To To To", true, false, 8);
  EXPECT_EQ(o.kind, OutcomeKind::kLoop);
  EXPECT_TRUE(o.looped && o.non_terminated && o.catastrophic && o.wrong_answer);
  EXPECT_EQ(o.loop_onset, 45);
  EXPECT_EQ(o.loop_period, 5);
  EXPECT_EQ(o.onset, 45);
  // A loop after a correct answer is still a catastrophe (it burnt the budget).
  const Outcome after = Classify(gen, "Answer: 8 Answer: 8 Answer: 8", false, true, 8);
  EXPECT_EQ(after.kind, OutcomeKind::kLoop);
  EXPECT_TRUE(after.correct && after.catastrophic);
  EXPECT_FALSE(after.non_terminated);
}

TEST(ClassifyTest, NonTermination) {
  const Outcome o = Classify(Random(300, 0, 500, 36), "rambling on and on", true, false, 8);
  EXPECT_EQ(o.kind, OutcomeKind::kNonTermination);
  EXPECT_TRUE(o.non_terminated && o.catastrophic);
  EXPECT_FALSE(o.looped);
  EXPECT_EQ(o.non_termination_onset, 299);
  EXPECT_EQ(o.onset, 299);
  // EOS at the last allowed token is termination.
  EXPECT_FALSE(Classify(Random(300, 0, 500, 36), "x", true, true, 8).non_terminated);
}

TEST(ClassifyTest, UngradedWithoutGold) {
  const Outcome o = Classify(Random(60, 0, 500, 37), "Answer: 3", false, true, std::nullopt);
  EXPECT_EQ(o.kind, OutcomeKind::kUngraded);
  EXPECT_FALSE(o.correct || o.wrong_answer || o.catastrophic);
  EXPECT_EQ(OutcomeKindName(o.kind), "ungraded");
}

// ---- intervals -------------------------------------------------------------------

TEST(IntervalTest, WilsonHandComputed) {
  // z = 1.96, z^2 = 3.8416. k = 0, n = 10: centre = 1.9208/13.8416 = half.
  RateCI ci = WilsonInterval(0, 10);
  EXPECT_DOUBLE_EQ(ci.rate, 0.0);
  EXPECT_NEAR(ci.lo, 0.0, 1e-12);
  EXPECT_NEAR(ci.hi, 0.277540, 1e-5);
  // k = 5, n = 10: centre 0.5, half = 1.96 * sqrt(2.5 + 0.9604) / 13.8416.
  ci = WilsonInterval(5, 10);
  EXPECT_DOUBLE_EQ(ci.rate, 0.5);
  EXPECT_NEAR(ci.lo, 0.236590, 1e-5);
  EXPECT_NEAR(ci.hi, 0.763410, 1e-5);
  ci = WilsonInterval(10, 10);
  EXPECT_NEAR(ci.lo, 1 - 0.277540, 1e-5);
  EXPECT_NEAR(ci.hi, 1.0, 1e-12);
  ci = WilsonInterval(0, 0);
  EXPECT_EQ(ci.lo, 0.0);
  EXPECT_EQ(ci.hi, 1.0);
}

TEST(IntervalTest, NewcombePublishedExample) {
  // Newcombe (1998), Stat Med 17:873, example (a): 56/70 - 48/80, method 10
  // gives 0.0524 to 0.3339.
  const RateCI ci = NewcombeDifference(56, 70, 48, 80);
  EXPECT_NEAR(ci.rate, 0.2, 1e-12);
  EXPECT_NEAR(ci.lo, 0.0524, 5e-4);
  EXPECT_NEAR(ci.hi, 0.3339, 5e-4);
}

TEST(IntervalTest, PairedBootstrap) {
  const std::vector<uint8_t> ones(100, 1), zeros(100, 0);
  RateCI ci = BootstrapDifference(ones, zeros);
  EXPECT_EQ(ci.rate, 1.0);
  EXPECT_EQ(ci.lo, 1.0);
  EXPECT_EQ(ci.hi, 1.0);
  ci = BootstrapDifference(ones, ones);
  EXPECT_EQ(ci.lo, 0.0);
  EXPECT_EQ(ci.hi, 0.0);

  std::vector<uint8_t> a(200, 0), b(200, 0);
  for (int i = 0; i < 60; ++i) a[i] = 1;      // 30% fail without the guard
  for (int i = 0; i < 20; ++i) b[i * 3] = 1;  // 10% with it
  const RateCI d = BootstrapDifference(a, b, 2000, 0.95, 7);
  EXPECT_NEAR(d.rate, 0.2, 1e-12);
  EXPECT_GT(d.lo, 0.0);
  EXPECT_LT(d.lo, 0.2);
  EXPECT_GT(d.hi, 0.2);
  const RateCI again = BootstrapDifference(a, b, 2000, 0.95, 7);
  EXPECT_EQ(d.lo, again.lo);
  EXPECT_EQ(d.hi, again.hi);
  EXPECT_TRUE(std::isnan(BootstrapDifference(a, zeros).rate));
}

}  // namespace
}  // namespace kvguard::guard
