// File: guard_sidecar/controller.h
//
// The per-session mode controller: NORMAL -> ALERT -> SAFE -> RECOVERY with
// hysteresis (guard.md 7.4), turning one hazard per token into a directive.
//
//   ModeController c(config);
//   Decision d = c.Step({.hazard = p, .position = pos, .requested_ratio = 0.8});
//   // d.mode, d.target_ratio, d.protect_positions, d.recompute_positions
//
// Rules (one Step = one token; the clock is the step count, never wall time):
//  - escalate one level when the hazard is above that level's `enter` for
//    `enter_steps` consecutive steps (NORMAL->ALERT on alert.enter,
//    ALERT->SAFE on safe.enter). Escalation is never delayed by dwell: acting
//    late is what the guard exists to avoid (HPA: scale up at once).
//  - de-escalate one level when the hazard is below the current level's
//    `exit` for `exit_steps` consecutive steps AND the mode has been held for
//    at least `min_dwell` steps (SAFE->ALERT on safe.exit, ALERT->NORMAL on
//    alert.exit). enter >= exit gives the dead band; counters restart on every
//    mode change and whenever their condition breaks.
//  - in SAFE, a hazard above recovery.enter for recovery.enter_steps steps
//    (SAFE did not calm it) enters RECOVERY for exactly one step, at most once
//    per recovery.cooldown steps and only if evicted positions are known: the
//    directive asks to recompute the top_n evicted positions that had received
//    the most attention; the next step is SAFE again (its dwell restarts).
//    With recovery.pin the restored positions are protected from then on.
// Exchange cadence: while a session is in NORMAL with its hazard below
// alert.exit (calm), it gives the server leave to batch `quiet_steps` steps of
// reports per exchange (QuietSteps); otherwise every step. 1 = always every step.
// Directives: NORMAL keeps the requested ratio and protects nothing; ALERT
// slows eviction (ratio x alert_ratio_scale) and protects the last
// protect_recent positions plus thinking-token positions; SAFE and RECOVERY
// use min(requested, r_safe) with the same protection (the server also pauses
// eviction there).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvguard/v1/common.pb.h"
#include "proto/kvguard/v1/mode_name.h"

namespace kvguard::guard {

struct LevelConfig {
  double enter = 0.5;   // hazard above this counts towards escalation into the level
  double exit = 0.4;    // hazard below this counts towards leaving the level
  int enter_steps = 8;  // K
  int exit_steps = 5;   // J
  int min_dwell = 16;   // steps held before de-escalating out of the level
};

struct RecoveryConfig {
  bool enabled = true;
  double enter = 0.85;
  int enter_steps = 4;
  int top_n = 32;     // positions recomputed per RECOVERY step
  int cooldown = 64;  // minimum steps between two RECOVERY steps
  // Restored positions stay protected for the rest of the session (in every
  // mode): they were needed once, and evicting them again when the mode
  // relaxes is how a rescued generation fails a second time.
  bool pin = false;
};

// Probe and restart (research/pipeline/admission.h): a session whose requested
// ratio is at least `min_requested_ratio` and whose hazard reaches `threshold`
// within its first `probe_tokens` tokens (and within the server's hold-back)
// is restarted at `restart_ratio`: damage done at prefill is undone by
// prefilling again, before any token reached the client.
struct AdmissionRule {
  int probe_tokens = 16;
  double threshold = 0.5;
  double min_requested_ratio = 0.875;
  double restart_ratio = 0.5;
};

struct ControllerConfig {
  LevelConfig alert{.enter = 0.3, .exit = 0.2, .enter_steps = 8, .exit_steps = 5, .min_dwell = 16};
  LevelConfig safe{.enter = 0.7, .exit = 0.5, .enter_steps = 8, .exit_steps = 5, .min_dwell = 32};
  RecoveryConfig recovery;
  double alert_ratio_scale = 0.5;  // ALERT ratio = requested x this
  double r_safe = 0.0;             // SAFE / RECOVERY ratio (capped by the requested one)
  int protect_recent = 32;
  int max_thinking_protect = 64;  // most recent thinking-token positions kept
  int quiet_steps = 1;            // steps per exchange while calm (see the rules above)
  // Per compressor name ("*": any other); empty = no restarts.
  std::map<std::string, AdmissionRule> admission;
  [[nodiscard]] const AdmissionRule* AdmissionFor(const std::string& compressor) const;

  // Every key is optional (defaults above); unknown keys are errors, except
  // "fallback_hazard" (the hazard rule's section of the same file) and keys
  // starting with "_" (comments). Errors name the offending field.
  static absl::StatusOr<ControllerConfig> FromJson(const nlohmann::json& j);
  static absl::StatusOr<ControllerConfig> Load(const std::string& path);
  [[nodiscard]] absl::Status Validate() const;
  [[nodiscard]] nlohmann::json ToJson() const;
};

// One step's input: the token's hazard and what the server reported.
struct StepInput {
  float hazard = 0;
  int32_t position = -1;  // KV position of this token (-1: unknown)
  bool thinking = false;  // the token is a transition word
  double requested_ratio = 0;
  int64_t holdback_tokens =
      0;  // the server holds this session's first tokens back (restart allowed)
  const AdmissionRule* admission = nullptr;    // the session's compressor's rule, if any
  std::span<const int32_t> evicted_positions;  // evicted at this step
  std::span<const float> evicted_attention;    // attention each had received
};

struct Decision {
  v1::Mode mode = v1::MODE_NORMAL;
  v1::Mode previous_mode = v1::MODE_NORMAL;  // != mode: a transition happened
  double target_ratio = 0;
  std::vector<int32_t> protect_positions;    // ascending
  std::vector<int32_t> recompute_positions;  // RECOVERY only, by attention
  std::optional<double> restart_ratio;       // admission: restart the session at this ratio
  bool release_held = false;                 // no restart can come: stream what is held back
};

// Not thread-safe; one per session.
class ModeController {
 public:
  explicit ModeController(const ControllerConfig& config);

  Decision Step(const StepInput& in);

  // After Step(hazard): how many steps of reports the server may gather
  // before the next exchange. quiet_steps while calm; else the steps left
  // before ALERT could be entered (a batch of that many decides it no later
  // than every-step exchange would); 1 outside NORMAL.
  [[nodiscard]] int QuietSteps(float hazard) const;
  [[nodiscard]] v1::Mode mode() const { return mode_; }
  [[nodiscard]] int64_t steps_in_mode() const { return dwell_; }
  [[nodiscard]] size_t evicted_candidates() const { return evicted_.size(); }

 private:
  void Observe(const StepInput& in);
  // The mode for this step given the hazard; updates counters.
  v1::Mode NextMode(float hazard);
  void Enter(v1::Mode mode);
  std::vector<int32_t> TopEvicted();
  [[nodiscard]] std::vector<int32_t> Protected(int32_t position,
                                               const std::vector<int32_t>& extra) const;

  ControllerConfig config_;
  v1::Mode mode_ = v1::MODE_NORMAL;
  int64_t step_ = 0;
  int64_t dwell_ = 0;       // steps completed in the current mode
  int up_count_ = 0;        // consecutive steps above the escalation threshold
  int down_count_ = 0;      // consecutive steps below the exit threshold
  int recovery_count_ = 0;  // consecutive SAFE steps above recovery.enter
  int64_t last_recovery_ = -1;
  std::deque<int32_t> thinking_positions_;
  std::map<int32_t, float> evicted_;  // evicted position -> attention it had
  std::set<int32_t> pinned_;          // restored by RECOVERY with recovery.pin
  bool restart_requested_ = false;
};

using v1::ModeName;  // "normal", "alert", "safe", "recovery" (proto/kvguard/v1/mode_name.h)

}  // namespace kvguard::guard
