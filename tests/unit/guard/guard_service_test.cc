// File: tests/unit/guard/guard_service_test.cc
//
// The per-stream batch processing, in process (the wire is covered by
// tests/integration/guard_server_test.cc).
#include "guard_sidecar/guard_service.h"

#include <prometheus/text_serializer.h>

#include "gtest/gtest.h"
#include "tests/unit/guard/report_util.h"

namespace kvguard::guard {
namespace {

using testing::MakeReport;

class FailingHazard final : public HazardPredictor {
 public:
  absl::StatusOr<std::vector<float>> Predict(std::span<const float>) const override {
    return absl::InternalError("boom");
  }
  std::string Describe() const override { return "failing"; }
};

// A predictor that records the batch sizes it saw and says 0.9 for everything.
class CountingHazard final : public HazardPredictor {
 public:
  absl::StatusOr<std::vector<float>> Predict(std::span<const float> rows) const override {
    calls.push_back(rows.size() / kNumFeatures);
    return std::vector<float>(rows.size() / kNumFeatures, 0.9f);
  }
  std::string Describe() const override { return "counting"; }
  mutable std::vector<size_t> calls;
};

v1::StepBatch Batch(uint64_t id) {
  v1::StepBatch b;
  b.set_batch_id(id);
  return b;
}

void AddStart(v1::StepBatch& b, const std::string& id, double ratio) {
  v1::SessionStart* s = b.add_starts();
  s->set_session_id(id);
  s->set_requested_ratio(ratio);
  s->set_prompt_tokens(10);
  s->set_max_new_tokens(200);
}

TEST(StreamSessionsTest, OneDirectivePerReportAndOnePredictionPerBatch) {
  CountingHazard hazard;
  GuardEngine engine(hazard, ControllerConfig{});
  StreamSessions sessions(engine);
  v1::StepBatch b = Batch(7);
  AddStart(b, "a", 0.8);
  AddStart(b, "b", 0.5);
  *b.add_reports() = MakeReport("a", {.step = 0});
  *b.add_reports() = MakeReport("b", {.step = 0});
  *b.add_reports() = MakeReport("c", {.step = 3, .ratio = 0.6});  // never started
  const v1::DirectiveBatch out = sessions.Process(b);
  EXPECT_EQ(out.batch_id(), 7u);
  ASSERT_EQ(out.directives_size(), 3);
  EXPECT_EQ(out.directives(0).session_id(), "a");
  EXPECT_EQ(out.directives(2).session_id(), "c");
  EXPECT_EQ(out.directives(2).step(), 3u);
  EXPECT_DOUBLE_EQ(out.directives(0).target_ratio().value(), 0.8);
  EXPECT_DOUBLE_EQ(out.directives(1).target_ratio().value(), 0.5);
  EXPECT_DOUBLE_EQ(out.directives(2).target_ratio().value(), 0.6);  // from kv.ratio
  EXPECT_FLOAT_EQ(out.directives(0).hazard(), 0.9f);
  EXPECT_EQ(hazard.calls, (std::vector<size_t>{3}));
  EXPECT_EQ(sessions.size(), 3u);
  EXPECT_EQ(engine.stats().sessions_active, 3);
  EXPECT_EQ(engine.stats().steps, 3);

  // A batch with only an end is answered too (empty), and drops the session.
  v1::StepBatch end = Batch(8);
  end.add_ends()->set_session_id("b");
  const v1::DirectiveBatch answer = sessions.Process(end);
  EXPECT_EQ(answer.batch_id(), 8u);
  EXPECT_EQ(answer.directives_size(), 0);
  EXPECT_EQ(sessions.size(), 2u);
  EXPECT_EQ(sessions.controller("b"), nullptr);
  EXPECT_EQ(hazard.calls.size(), 1u);  // no reports, no prediction
  EXPECT_EQ(engine.stats().batches, 2);
}

TEST(StreamSessionsTest, RisingEntropySessionEscalatesAndCalmOneDoesNot) {
  FallbackHazard hazard;
  GuardMetrics metrics;
  GuardEngine engine(hazard, ControllerConfig{}, &metrics);
  {
    StreamSessions sessions(engine);
    v1::StepBatch first = Batch(1);
    AddStart(first, "calm", 0.8);
    AddStart(first, "bad", 0.8);
    sessions.Process(first);
    v1::Mode last_bad = v1::MODE_NORMAL;
    for (uint32_t t = 0; t < 60; ++t) {
      v1::StepBatch b = Batch(2 + t);
      *b.add_reports() =
          MakeReport("calm", {.step = t, .token = static_cast<int32_t>(t), .entropy = 0.3f});
      *b.add_reports() = MakeReport("bad", {.step = t,
                                            .token = static_cast<int32_t>(t % 5),
                                            .entropy = 0.5f + 0.1f * t,
                                            .total_tokens = 10 + t});
      const v1::DirectiveBatch out = sessions.Process(b);
      ASSERT_EQ(out.directives_size(), 2);
      EXPECT_EQ(out.directives(0).mode(), v1::MODE_NORMAL) << "t=" << t;
      last_bad = out.directives(1).mode();
      if (last_bad != v1::MODE_NORMAL) {
        EXPECT_FALSE(out.directives(1).protect_positions().empty());
        EXPECT_LT(out.directives(1).target_ratio().value(), 0.8);
      }
    }
    EXPECT_NE(last_bad, v1::MODE_NORMAL);
    EXPECT_EQ(engine.stats().sessions_active, 2);
  }
  // The stream went away: its sessions with it.
  EXPECT_EQ(engine.stats().sessions_active, 0);
  const std::string text = prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
  EXPECT_NE(text.find("kvguard_guard_mode_transitions_total{from=\"normal\",to=\"alert\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("kvguard_guard_steps_total 120"), std::string::npos);
  EXPECT_NE(text.find("kvguard_guard_sessions_active 0"), std::string::npos);
  EXPECT_NE(text.find("kvguard_guard_hazard_count 120"), std::string::npos);
}

// A predictor that says what the test sets, per row in order.
class ScriptedHazard final : public HazardPredictor {
 public:
  absl::StatusOr<std::vector<float>> Predict(std::span<const float> rows) const override {
    EXPECT_EQ(rows.size() / kNumFeatures, next.size());
    return next;
  }
  std::string Describe() const override { return "scripted"; }
  std::vector<float> next;
};

TEST(StreamSessionsTest, QuietStepsAreTheLeastLeaveOfTheSessionsLatestReports) {
  ScriptedHazard hazard;
  ControllerConfig config;  // alert: exit 0.2, enter 0.3 for 8 steps
  config.quiet_steps = 12;
  GuardEngine engine(hazard, config);
  StreamSessions sessions(engine);
  auto process = [&](std::vector<std::pair<std::string, float>> reports) {
    v1::StepBatch b = Batch(1);
    hazard.next.clear();
    for (const auto& [id, h] : reports) {
      *b.add_reports() = MakeReport(id, {});
      hazard.next.push_back(h);
    }
    return sessions.Process(b).quiet_steps();
  };
  EXPECT_EQ(process({{"a", 0.1f}, {"b", 0.1f}}), 12u) << "both calm";
  EXPECT_EQ(process({{"a", 0.1f}, {"b", 0.35f}}), 7u) << "b one step above alert.enter";
  // Two steps of a in one batch: its latest report (calm) is what counts.
  EXPECT_EQ(process({{"a", 0.35f}, {"a", 0.1f}}), 12u);
  EXPECT_EQ(process({}), 1u) << "no reports: no leave";
}

TEST(StreamSessionsTest, PredictorErrorFallsBackAndIsCounted) {
  FailingHazard hazard;
  GuardEngine engine(hazard, ControllerConfig{});
  StreamSessions sessions(engine);
  v1::StepBatch b = Batch(1);
  *b.add_reports() = MakeReport("x", {.entropy = 6.0f});
  const v1::DirectiveBatch out = sessions.Process(b);
  ASSERT_EQ(out.directives_size(), 1);
  EXPECT_GT(out.directives(0).hazard(), 0.9f);  // the fallback rule saw entropy 6
  EXPECT_EQ(engine.stats().predict_errors, 1);
}

TEST(StreamSessionsTest, RestartingASessionResetsIt) {
  CountingHazard hazard;  // 0.9: escalates after K steps
  GuardEngine engine(hazard, ControllerConfig{});
  StreamSessions sessions(engine);
  for (uint32_t t = 0; t < 20; ++t) {
    v1::StepBatch b = Batch(t);
    *b.add_reports() = MakeReport("s", {.step = t});
    sessions.Process(b);
  }
  ASSERT_NE(sessions.controller("s")->mode(), v1::MODE_NORMAL);
  v1::StepBatch again = Batch(100);
  AddStart(again, "s", 0.5);
  sessions.Process(again);
  EXPECT_EQ(sessions.controller("s")->mode(), v1::MODE_NORMAL);
  EXPECT_EQ(engine.stats().sessions_active, 1);
}

}  // namespace
}  // namespace kvguard::guard
