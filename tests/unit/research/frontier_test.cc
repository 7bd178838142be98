// The static frontier: convex hulls, interpolation, static records from traces
// (integrated savings from the per-step feature columns), and the paired
// bootstrap gap of a guard arm against the hull on synthetic records whose
// answer is known.
#include "research/pipeline/frontier.h"

#include <gtest/gtest.h>

#include <cmath>

#include "research/pipeline/admission.h"

namespace kvguard::research {
namespace {

TEST(FrontierTest, LowerHullDropsPointsAboveMixtures) {
  // (0.8, 0.6) lies above the segment from (0.75, 0.2) to (0.875, 0.5): a mix beats it.
  const std::vector<Point> hull = ConvexFrontier(
      {{0, 0}, {0.5, 0}, {0.75, 0.2}, {0.8, 0.6}, {0.875, 0.5}, {0.9375, 0.9}, {0.5, 0.3}},
      /*upper=*/false);
  ASSERT_EQ(hull.size(), 5u);
  EXPECT_DOUBLE_EQ(hull[2].savings, 0.75);
  EXPECT_DOUBLE_EQ(hull[3].savings, 0.875);
  EXPECT_NEAR(*FrontierAt(hull, 0.8125), 0.35, 1e-12);
  EXPECT_NEAR(*FrontierAt(hull, 0.25), 0.0, 1e-12);
  EXPECT_FALSE(FrontierAt(hull, 0.95).has_value());
  EXPECT_FALSE(FrontierAt(hull, -0.1).has_value());
}

TEST(FrontierTest, UpperHullForAccuracy) {
  const std::vector<Point> hull =
      ConvexFrontier({{0, 1.0}, {0.5, 0.9}, {0.75, 0.5}, {0.6, 0.6}, {0.875, 0.1}}, /*upper=*/true);
  // (0.6, 0.6) lies below the mix of (0.5, 0.9) and (0.75, 0.5) (0.74 there).
  for (const Point& p : hull) EXPECT_NE(p.savings, 0.6);
  EXPECT_NEAR(*FrontierAt(hull, 0.6), 0.9 - 0.4 * (0.1 / 0.25), 1e-12);
}

TEST(FrontierTest, StaticRecordsIntegrateSavingsOverSteps) {
  Trace t{.prompt_id = "p0",
          .compressor = "snapkv",
          .ratio = 0.5,
          .catastrophic = true,
          .tokens = 2,
          .kv_bytes = 40,
          .kv_bytes_uncompressed = 100};
  // Columns: kv_bytes, kv_retained_frac. Step 0 holds 30 of 60, step 1 40 of 50 bytes.
  t.features = {30, 0.5f, 40, 0.8f};
  auto records = StaticRecords({t, Trace{.prompt_id = "p1", .compressor = "none"}},
                               {"kv_bytes", "kv_retained_frac"}, {});
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[0].arm, "static@0.5");
  EXPECT_NEAR((*records)[0].savings_end, 0.6, 1e-12);
  EXPECT_NEAR((*records)[0].savings_integrated, 1.0 - 70.0 / 110.0, 1e-6);
  EXPECT_EQ((*records)[1].arm, "none");
  EXPECT_EQ((*records)[1].savings_integrated, 0);
  // A prompt filter keeps only those prompts.
  EXPECT_EQ(StaticRecords({t}, {"kv_bytes", "kv_retained_frac"}, {"other"})->size(), 0u);
}

// 200 prompts: none (savings 0, CFR 0), static@0.5 (0.5, CFR 0), static@0.875
// (0.875, CFR 0.5). The hull at savings 0.7 is 0.5 * 0.2 / 0.375 = 0.267.
std::vector<PolicyRecord> Synthetic(double guard_savings, int guard_failures_per_100) {
  std::vector<PolicyRecord> out;
  for (int i = 0; i < 200; ++i) {
    const std::string id = "p" + std::to_string(i);
    out.push_back({.prompt_id = id, .compressor = "none", .arm = "none", .correct = true});
    out.push_back({.prompt_id = id,
                   .compressor = "snapkv",
                   .arm = "static@0.5",
                   .requested_ratio = 0.5,
                   .correct = true,
                   .savings_end = 0.5,
                   .savings_integrated = 0.5});
    const bool fails = i % 2 == 0;
    out.push_back({.prompt_id = id,
                   .compressor = "snapkv",
                   .arm = "static@0.875",
                   .requested_ratio = 0.875,
                   .catastrophic = fails,
                   .correct = !fails,
                   .savings_end = 0.875,
                   .savings_integrated = 0.875});
    const bool guard_fails = (i % 100) < guard_failures_per_100;
    out.push_back({.prompt_id = id,
                   .compressor = "snapkv",
                   .arm = "guarded@0.875",
                   .requested_ratio = 0.875,
                   .catastrophic = guard_fails,
                   .correct = !guard_fails,
                   .savings_end = guard_savings,
                   .savings_integrated = guard_savings});
  }
  return out;
}

TEST(FrontierTest, AGuardBelowTheHullHasAPositiveGapWhoseIntervalExcludesZero) {
  auto r = EvaluateFrontier(Synthetic(0.7, 5), "snapkv", "guarded@0.875", {.resamples = 500});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompts, 200);
  EXPECT_NEAR(*r->hull_cfr, 0.5 * 0.2 / 0.375, 1e-9);
  EXPECT_NEAR(r->cfr_gap.estimate, 0.5 * 0.2 / 0.375 - 0.05, 1e-9);
  EXPECT_GT(r->cfr_gap.lo, 0);
  EXPECT_LT(r->cfr_ratio, 0.5);
  EXPECT_GE(r->accuracy_gap.estimate, 0);
}

TEST(FrontierTest, AGuardAboveTheHullHasANegativeGap) {
  auto r = EvaluateFrontier(Synthetic(0.6, 40), "snapkv", "guarded@0.875", {.resamples = 500});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->cfr_gap.estimate, 0);
  EXPECT_LT(r->cfr_gap.hi, 0);
}

TEST(FrontierTest, OnlyPromptsEveryArmHasArePaired) {
  auto records = Synthetic(0.7, 5);
  std::erase_if(records, [](const PolicyRecord& r) {
    return r.arm == "guarded@0.875" && r.prompt_id == "p3";
  });
  auto r = EvaluateFrontier(records, "snapkv", "guarded@0.875", {.resamples = 200});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->prompts, 199);
  EXPECT_FALSE(EvaluateFrontier(records, "tova", "guarded@0.875", {}).ok());
}

TEST(FrontierTest, RecordsRoundTripThroughJson) {
  PolicyRecord r{.prompt_id = "arith-test-000001",
                 .compressor = "tova",
                 .arm = "guarded@0.9",
                 .requested_ratio = 0.9,
                 .catastrophic = true,
                 .looped = true,
                 .savings_end = 0.4,
                 .savings_integrated = 0.5,
                 .tokens = 12,
                 .fail_safe_events = 1,
                 .mode_steps = {{"normal", 4}, {"safe", 8}}};
  auto back = RecordFromJson(RecordToJson(r));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(RecordToJson(*back), RecordToJson(r));
  EXPECT_FALSE(RecordFromJson(nlohmann::json{{"arm", "x"}}).ok());
}

}  // namespace
}  // namespace kvguard::research

namespace kvguard::research {
namespace {

// Probe-and-restart takes, per prompt, the high-ratio trace's outcome unless
// the hazard reached the threshold within the probe, then the low-ratio one's.
TEST(AdmissionTest, ProbeRestartPicksTheLowRatioTraceOnAlarm) {
  std::vector<Trace> traces;
  std::map<const Trace*, std::vector<float>> hazards;
  for (int p = 0; p < 2; ++p) {
    const std::string id = "p" + std::to_string(p);
    traces.push_back({.prompt_id = id,
                      .compressor = "snapkv",
                      .ratio = 0.875,
                      .catastrophic = true,
                      .tokens = 3});
    traces.push_back(
        {.prompt_id = id, .compressor = "snapkv", .ratio = 0.5, .correct = true, .tokens = 3});
  }
  std::vector<const Trace*> ptrs;
  for (const Trace& t : traces) ptrs.push_back(&t);
  hazards[&traces[0]] = {0.1f, 0.9f, 0.9f};  // p0 alarms at token 1
  hazards[&traces[1]] = {0, 0, 0};
  hazards[&traces[2]] = {0.1f, 0.2f, 0.95f};  // p1 alarms only at token 2, after a 2-token probe
  hazards[&traces[3]] = {0, 0, 0};
  ProbeRestartPolicy policy{.compressor = "snapkv",
                            .high_ratio = 0.875,
                            .low_ratio = 0.5,
                            .probe_tokens = 2,
                            .threshold = 0.8};
  auto records = ProbeRestartRecords(policy, ptrs, hazards, {});
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].arm, "probe2@0.875>0.5");
  EXPECT_FALSE(records[0].catastrophic);  // restarted at 0.5
  EXPECT_TRUE(records[0].correct);
  EXPECT_TRUE(records[1].catastrophic);  // kept at 0.875
  EXPECT_EQ(records[1].mode_steps.at("kept"), 1);
}

}  // namespace
}  // namespace kvguard::research
