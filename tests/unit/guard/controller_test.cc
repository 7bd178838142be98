// File: tests/unit/guard/controller_test.cc
#include "guard_sidecar/controller.h"

#include <nlohmann/json.hpp>
#include <random>

#include "gtest/gtest.h"

namespace kvguard::guard {
namespace {

using v1::MODE_ALERT;
using v1::MODE_NORMAL;
using v1::MODE_RECOVERY;
using v1::MODE_SAFE;

// Small numbers so the scripts stay readable.
ControllerConfig SmallConfig() {
  ControllerConfig c;
  c.alert = {.enter = 0.3, .exit = 0.2, .enter_steps = 3, .exit_steps = 2, .min_dwell = 5};
  c.safe = {.enter = 0.7, .exit = 0.5, .enter_steps = 3, .exit_steps = 2, .min_dwell = 5};
  c.recovery = {.enabled = true, .enter = 0.9, .enter_steps = 2, .top_n = 2, .cooldown = 10};
  c.alert_ratio_scale = 0.5;
  c.r_safe = 0.1;
  c.protect_recent = 4;
  return c;
}

std::vector<v1::Mode> RunModes(ModeController& c, const std::vector<float>& hazards) {
  std::vector<v1::Mode> out;
  for (float h : hazards) out.push_back(c.Step({.hazard = h, .requested_ratio = 0.8}).mode);
  return out;
}

int Transitions(const std::vector<v1::Mode>& modes) {
  int n = 0;
  for (size_t i = 1; i < modes.size(); ++i) n += modes[i] != modes[i - 1];
  return n + (!modes.empty() && modes[0] != MODE_NORMAL);
}

std::vector<float> Repeat(float h, int n) { return std::vector<float>(n, h); }
std::vector<float> Concat(std::initializer_list<std::vector<float>> parts) {
  std::vector<float> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(ControllerTest, EscalatesOnlyAfterKConsecutiveSteps) {
  ModeController c(SmallConfig());
  const auto modes = RunModes(c, {0.5f, 0.5f, 0.1f, 0.5f, 0.5f, 0.5f});
  EXPECT_EQ(modes, (std::vector<v1::Mode>{MODE_NORMAL, MODE_NORMAL, MODE_NORMAL, MODE_NORMAL,
                                          MODE_NORMAL, MODE_ALERT}));
  // ALERT -> SAFE needs K steps above safe.enter; in between, dead-band steps reset nothing
  // of ALERT but break the SAFE count.
  const auto more = RunModes(c, {0.8f, 0.8f, 0.6f, 0.8f, 0.8f, 0.8f});
  EXPECT_EQ(more, (std::vector<v1::Mode>{MODE_ALERT, MODE_ALERT, MODE_ALERT, MODE_ALERT, MODE_ALERT,
                                         MODE_SAFE}));
}

TEST(ControllerTest, QuietStepsWhileCalmAndNoLaterThanEscalationOtherwise) {
  ControllerConfig config = SmallConfig();  // alert: exit 0.2, enter 0.3 for 3 steps
  config.quiet_steps = 8;
  ModeController c(config);
  c.Step({.hazard = 0.1f, .requested_ratio = 0.8});
  EXPECT_EQ(c.QuietSteps(0.1f), 8) << "calm: below alert.exit";
  // In the dead band, or above alert.enter: only as many steps as ALERT is
  // away, so a batch of them decides it as soon as every-step exchange would.
  c.Step({.hazard = 0.25f, .requested_ratio = 0.8});
  EXPECT_EQ(c.QuietSteps(0.25f), 3);
  c.Step({.hazard = 0.5f, .requested_ratio = 0.8});
  EXPECT_EQ(c.QuietSteps(0.5f), 2);
  c.Step({.hazard = 0.5f, .requested_ratio = 0.8});
  EXPECT_EQ(c.QuietSteps(0.5f), 1);
  EXPECT_EQ(c.Step({.hazard = 0.5f, .requested_ratio = 0.8}).mode, MODE_ALERT);
  EXPECT_EQ(c.QuietSteps(0.0f), 1) << "outside NORMAL: every step";
  // The default (1) keeps every-step exchange whatever the hazard.
  ModeController plain(SmallConfig());
  plain.Step({.hazard = 0.0f, .requested_ratio = 0.8});
  EXPECT_EQ(plain.QuietSteps(0.0f), 1);
}

TEST(ControllerTest, MinimumDwellIsRespected) {
  ModeController c(SmallConfig());
  RunModes(c, Repeat(0.5f, 3));  // ALERT at the 3rd step
  ASSERT_EQ(c.mode(), MODE_ALERT);
  // Calm at once: J = 2 is met after 2 steps, but ALERT is held min_dwell = 5 steps in all.
  const auto modes = RunModes(c, Repeat(0.0f, 10));
  int alert_steps = 1;  // the step that entered ALERT
  for (v1::Mode m : modes) alert_steps += m == MODE_ALERT;
  EXPECT_EQ(alert_steps, 5);
  EXPECT_EQ(c.mode(), MODE_NORMAL);
  // A shorter dwell would have left after J.
  ControllerConfig quick = SmallConfig();
  quick.alert.min_dwell = 0;
  ModeController q(quick);
  RunModes(q, Repeat(0.5f, 3));
  EXPECT_EQ(RunModes(q, Repeat(0.0f, 2)), (std::vector<v1::Mode>{MODE_ALERT, MODE_NORMAL}));
}

TEST(ControllerTest, DeescalatesAfterJConsecutiveStepsBelowExit) {
  ModeController c(SmallConfig());
  RunModes(c, Concat({Repeat(0.5f, 3), Repeat(0.25f, 10)}));  // dwell satisfied, in the dead band
  ASSERT_EQ(c.mode(), MODE_ALERT);
  // Below exit, dead band (resets the count), below, below -> NORMAL on the 2nd in a row.
  EXPECT_EQ(RunModes(c, {0.1f, 0.25f, 0.1f, 0.1f}),
            (std::vector<v1::Mode>{MODE_ALERT, MODE_ALERT, MODE_ALERT, MODE_NORMAL}));
  // SAFE steps down one level at a time: SAFE -> ALERT -> NORMAL.
  ModeController s(SmallConfig());
  RunModes(s, Concat({Repeat(0.5f, 3), Repeat(0.8f, 3)}));
  ASSERT_EQ(s.mode(), MODE_SAFE);
  const auto down = RunModes(s, Repeat(0.0f, 12));
  EXPECT_EQ(down[3], MODE_SAFE);
  EXPECT_EQ(down[4], MODE_ALERT);  // SAFE held min_dwell = 5 steps in all
  EXPECT_EQ(down[8], MODE_ALERT);
  EXPECT_EQ(down[9], MODE_NORMAL);
}

TEST(ControllerTest, NoFlappingAroundASingleThreshold) {
  const ControllerConfig config = SmallConfig();
  // Alternating just below / just above alert.enter: never K in a row.
  std::vector<float> alternating;
  for (int i = 0; i < 1000; ++i) alternating.push_back(i % 2 ? 0.31f : 0.29f);
  ModeController a(config);
  EXPECT_EQ(Transitions(RunModes(a, alternating)), 0);
  // Slow square wave around alert.enter: enters ALERT once and stays, since
  // 0.29 is above alert.exit (the dead band absorbs it).
  std::vector<float> square;
  for (int i = 0; i < 1000; ++i) square.push_back((i / 4) % 2 ? 0.29f : 0.31f);
  ModeController b(config);
  EXPECT_EQ(Transitions(RunModes(b, square)), 1);
  // Noise around 0.3 (+-0.05): at most the one escalation.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> noise(0.25f, 0.35f);
  std::vector<float> noisy;
  for (int i = 0; i < 5000; ++i) noisy.push_back(noise(rng));
  ModeController n(config);
  EXPECT_LE(Transitions(RunModes(n, noisy)), 1);
  // And the same wave around alert.exit while in ALERT: never J below in a row.
  ModeController e(config);
  RunModes(e, Concat({Repeat(0.5f, 3), Repeat(0.25f, 10)}));
  std::vector<float> around_exit;
  for (int i = 0; i < 1000; ++i) around_exit.push_back(i % 2 ? 0.21f : 0.19f);
  EXPECT_EQ(Transitions(RunModes(e, around_exit)), 1);  // only the initial NORMAL->ALERT counted
  // A bare threshold (K = J = 1, no band, no dwell) would flip on every step.
  ControllerConfig bare = config;
  bare.alert = {.enter = 0.3, .exit = 0.3, .enter_steps = 1, .exit_steps = 1, .min_dwell = 0};
  ModeController f(bare);
  EXPECT_GT(Transitions(RunModes(f, alternating)), 900);
}

TEST(ControllerTest, DirectivesPerMode) {
  ModeController c(SmallConfig());
  Decision d = c.Step({.hazard = 0.0f, .position = 20, .thinking = true, .requested_ratio = 0.8});
  EXPECT_EQ(d.mode, MODE_NORMAL);
  EXPECT_DOUBLE_EQ(d.target_ratio, 0.8);
  EXPECT_TRUE(d.protect_positions.empty());
  for (int32_t p = 21; p < 24; ++p)
    d = c.Step({.hazard = 0.5f, .position = p, .requested_ratio = 0.8});
  EXPECT_EQ(d.mode, MODE_ALERT);
  EXPECT_EQ(d.previous_mode, MODE_NORMAL);
  EXPECT_DOUBLE_EQ(d.target_ratio, 0.4);  // slower eviction
  // The last protect_recent = 4 positions and the thinking token at 20.
  EXPECT_EQ(d.protect_positions, (std::vector<int32_t>{20, 21, 22, 23}));
  d = c.Step({.hazard = 0.5f, .position = 30, .requested_ratio = 0.8});
  EXPECT_EQ(d.protect_positions, (std::vector<int32_t>{20, 27, 28, 29, 30}));
  for (int32_t p = 31; p < 34; ++p)
    d = c.Step({.hazard = 0.8f, .position = p, .requested_ratio = 0.8});
  EXPECT_EQ(d.mode, MODE_SAFE);
  EXPECT_DOUBLE_EQ(d.target_ratio, 0.1);  // r_safe
  EXPECT_TRUE(d.recompute_positions.empty());
  // SAFE never compresses harder than requested.
  d = c.Step({.hazard = 0.8f, .position = 34, .requested_ratio = 0.05});
  EXPECT_DOUBLE_EQ(d.target_ratio, 0.05);
}

TEST(ControllerTest, RecoveryRecomputesTopAttendedEvictionsThenReturnsToSafe) {
  ModeController c(SmallConfig());
  const std::vector<int32_t> evicted = {3, 5, 7, 9};
  const std::vector<float> attention = {0.1f, 0.7f, 0.3f, 0.5f};
  c.Step({.hazard = 0.0f,
          .position = 10,
          .requested_ratio = 0.8,
          .evicted_positions = evicted,
          .evicted_attention = attention});
  RunModes(c, Concat({Repeat(0.5f, 3), Repeat(0.8f, 3)}));
  ASSERT_EQ(c.mode(), MODE_SAFE);
  Decision d = c.Step({.hazard = 0.95f, .position = 20, .requested_ratio = 0.8});
  EXPECT_EQ(d.mode, MODE_SAFE);  // 1 of recovery.enter_steps = 2
  d = c.Step({.hazard = 0.95f, .position = 21, .requested_ratio = 0.8});
  EXPECT_EQ(d.mode, MODE_RECOVERY);
  EXPECT_EQ(d.recompute_positions, (std::vector<int32_t>{5, 9}));  // most attention first
  EXPECT_DOUBLE_EQ(d.target_ratio, 0.1);
  for (int32_t p : {5, 9, 21}) {
    EXPECT_TRUE(std::count(d.protect_positions.begin(), d.protect_positions.end(), p)) << p;
  }
  d = c.Step({.hazard = 0.95f, .position = 22, .requested_ratio = 0.8});
  EXPECT_EQ(d.mode, MODE_SAFE);  // one step only
  EXPECT_EQ(d.previous_mode, MODE_RECOVERY);
  EXPECT_TRUE(d.recompute_positions.empty());
  // Cooldown of 10 steps since the RECOVERY step, then the next best two.
  int steps = 0;
  do {
    d = c.Step({.hazard = 0.95f, .position = 23 + steps, .requested_ratio = 0.8});
    ++steps;
  } while (d.mode != MODE_RECOVERY && steps < 50);
  EXPECT_EQ(steps, 9);  // RECOVERY at step 21 + 10
  EXPECT_EQ(d.recompute_positions, (std::vector<int32_t>{7, 3}));
  EXPECT_EQ(c.evicted_candidates(), 0u);
  // Nothing left to recompute: stays SAFE however high the hazard.
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(c.Step({.hazard = 1.0f, .position = 40 + i, .requested_ratio = 0.8}).mode, MODE_SAFE);
  }
}

// recovery.pin: what RECOVERY restored stays protected in every later mode,
// NORMAL included, so relaxing the ratio cannot evict it again.
TEST(ControllerTest, PinnedRecoveriesStayProtectedAfterReturningToNormal) {
  ControllerConfig config = SmallConfig();
  config.recovery.pin = true;
  ModeController c(config);
  const std::vector<int32_t> evicted = {3, 5, 7, 9};
  const std::vector<float> attention = {0.1f, 0.7f, 0.3f, 0.5f};
  c.Step({.hazard = 0.0f,
          .position = 10,
          .requested_ratio = 0.8,
          .evicted_positions = evicted,
          .evicted_attention = attention});
  RunModes(c, Concat({Repeat(0.5f, 3), Repeat(0.8f, 3), Repeat(0.95f, 2)}));
  int32_t position = 30;
  Decision d;
  for (int i = 0; i < 200 && c.mode() != MODE_NORMAL; ++i) {
    d = c.Step({.hazard = 0.0f, .position = position++, .requested_ratio = 0.8});
  }
  ASSERT_EQ(c.mode(), MODE_NORMAL);
  d = c.Step({.hazard = 0.0f, .position = position++, .requested_ratio = 0.8});
  EXPECT_DOUBLE_EQ(d.target_ratio, 0.8);
  EXPECT_EQ(d.protect_positions, (std::vector<int32_t>{5, 9}));
  // Without pin, NORMAL protects nothing.
  ModeController plain(SmallConfig());
  plain.Step({.hazard = 0.0f,
              .position = 10,
              .requested_ratio = 0.8,
              .evicted_positions = evicted,
              .evicted_attention = attention});
  RunModes(plain, Concat({Repeat(0.5f, 3), Repeat(0.8f, 3), Repeat(0.95f, 2)}));
  for (int i = 0; i < 200 && plain.mode() != MODE_NORMAL; ++i) {
    d = plain.Step({.hazard = 0.0f, .position = 30 + i, .requested_ratio = 0.8});
  }
  d = plain.Step({.hazard = 0.0f, .position = 300, .requested_ratio = 0.8});
  EXPECT_TRUE(d.protect_positions.empty());
}

// ---- config -------------------------------------------------------------------------------

std::string ErrorOf(const std::string& text) {
  auto c = ControllerConfig::FromJson(nlohmann::json::parse(text));
  return c.ok() ? "" : std::string(c.status().message());
}

TEST(ControllerConfigTest, DefaultsAndOverrides) {
  auto c = ControllerConfig::FromJson(nlohmann::json::parse(
      R"({"_comment": "x", "r_safe": 0.2, "safe": {"min_dwell": 3},
          "fallback_hazard": {"entropy_threshold": 2}})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->r_safe, 0.2);
  EXPECT_EQ(c->safe.min_dwell, 3);
  EXPECT_EQ(c->safe.enter, ControllerConfig{}.safe.enter);
  EXPECT_EQ(c->alert.enter_steps, 8);
  // Round trip through ToJson.
  auto again = ControllerConfig::FromJson(c->ToJson());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ToJson(), c->ToJson());
}

TEST(ControllerConfigTest, ValidationErrorsNameTheField) {
  EXPECT_NE(ErrorOf(R"({"alert": {"exit": 0.5}})").find("alert.exit"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"safe": {"enter_steps": 0}})").find("safe.enter_steps"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"safe": {"min_dwell": -1}})").find("safe.min_dwell"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"r_safe": 1.5})").find("r_safe"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"alert_ratio_scale": -0.1})").find("alert_ratio_scale"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"alert": {"enter": "high"}})").find("alert.enter must be a number"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"alert": {"exit_steps": 2.5}})").find("alert.exit_steps must be an integer"),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"alrt": {}})").find("alrt"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"safe": {"entr": 0.9}})").find("safe.entr"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"recovery": {"top_n": 0}})").find("recovery.top_n"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"recovery": {"enabled": 1}})").find("recovery.enabled"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"safe": {"enter": 0.2, "exit": 0.1}})").find("safe.enter"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"protect_recent": -3})").find("protect_recent"), std::string::npos);
  EXPECT_NE(ErrorOf(R"({"quiet_steps": 0})").find("quiet_steps"), std::string::npos);
  EXPECT_NE(ErrorOf("[1, 2]").find("object"), std::string::npos);
}

TEST(ControllerConfigTest, ShippedConfigLoads) {
  const std::string path =
      std::string(KVG_TEST_DATA_DIR) + "/../../guard_sidecar/config/controller.json";
  auto c = ControllerConfig::Load(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Validate().ok());
  EXPECT_FALSE(ControllerConfig::Load("/nonexistent/controller.json").ok());
}

// Admission: a hazard at or above the threshold within the probe and the
// server's hold-back restarts the session, once; never past the probe, below
// the rule's requested ratio, or when the server holds nothing back.
TEST(ControllerTest, AdmissionRestartsOnceWithinTheProbe) {
  auto config = ControllerConfig::FromJson(nlohmann::json::parse(R"({"admission": {"snapkv":
      {"probe_tokens": 4, "threshold": 0.6, "min_requested_ratio": 0.8, "restart_ratio": 0.5}}})"));
  ASSERT_TRUE(config.ok()) << config.status();
  const AdmissionRule* rule = config->AdmissionFor("snapkv");
  ASSERT_NE(rule, nullptr);
  EXPECT_EQ(config->AdmissionFor("tova"), nullptr);
  auto run = [&](std::vector<float> hazards, double requested, int64_t holdback) {
    ModeController c(*config);
    std::vector<int> restarts;
    for (size_t i = 0; i < hazards.size(); ++i) {
      Decision d = c.Step({.hazard = hazards[i],
                           .requested_ratio = requested,
                           .holdback_tokens = holdback,
                           .admission = rule});
      if (d.restart_ratio) {
        EXPECT_EQ(*d.restart_ratio, 0.5);
        restarts.push_back(static_cast<int>(i));
      }
    }
    return restarts;
  };
  EXPECT_EQ(run({0.1f, 0.7f, 0.9f, 0.9f}, 0.875, 16), std::vector<int>({1}));  // once
  EXPECT_TRUE(run({0.1f, 0.1f, 0.1f, 0.1f, 0.9f}, 0.875, 16).empty());         // past the probe
  EXPECT_TRUE(run({0.9f}, 0.75, 16).empty());              // requested ratio too low
  EXPECT_TRUE(run({0.9f}, 0.875, 0).empty());              // nothing held back
  EXPECT_TRUE(run({0.1f, 0.1f, 0.9f}, 0.875, 2).empty());  // past the hold-back
  // The server may stream what it holds back once no restart can come.
  auto released = [&](const AdmissionRule* r, std::vector<float> hazards, double requested,
                      int64_t holdback) {
    ModeController c(*config);
    std::vector<bool> out;
    for (float h : hazards) {
      out.push_back(c.Step({.hazard = h,
                            .requested_ratio = requested,
                            .holdback_tokens = holdback,
                            .admission = r})
                        .release_held);
    }
    return out;
  };
  const std::vector<float> calm(6, 0.1f);
  EXPECT_EQ(released(rule, calm, 0.875, 16),
            std::vector<bool>({false, false, false, true, true, true}));      // after the probe
  EXPECT_EQ(released(rule, calm, 0.75, 16), std::vector<bool>(6, true));      // rule does not apply
  EXPECT_EQ(released(nullptr, calm, 0.875, 16), std::vector<bool>(6, true));  // no rule
  EXPECT_EQ(released(rule, calm, 0.875, 0), std::vector<bool>(6, false));     // nothing held
  EXPECT_EQ(released(rule, calm, 0.875, 2),
            std::vector<bool>({false, true, true, true, true, true}));  // the hold-back is shorter
  EXPECT_EQ(released(rule, {0.1f, 0.9f}, 0.875, 16), std::vector<bool>({false, false}));  // restart
  // The rule survives a JSON round trip; a restart ratio at or above the rule's floor is refused.
  EXPECT_EQ(ControllerConfig::FromJson(config->ToJson())->admission.at("snapkv").threshold, 0.6);
  auto bad = ControllerConfig::FromJson(nlohmann::json::parse(
      R"({"admission": {"*": {"min_requested_ratio": 0.5, "restart_ratio": 0.5}}})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("admission.*"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace kvguard::guard
