#include "guard_sidecar/controller.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace kvguard::guard {
namespace {

using nlohmann::json;
using Field = std::variant<double*, int*, bool*>;

absl::Status ConfigError(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("controller config: ", message));
}

// Reads `value` into the field, checking its JSON type; `name` is the dotted path.
absl::Status ReadField(const json& value, const std::string& name, Field field) {
  if (auto* d = std::get_if<double*>(&field)) {
    if (!value.is_number()) return ConfigError(absl::StrCat(name, " must be a number"));
    **d = value.get<double>();
  } else if (auto* i = std::get_if<int*>(&field)) {
    if (!value.is_number_integer()) return ConfigError(absl::StrCat(name, " must be an integer"));
    **i = value.get<int>();
  } else {
    if (!value.is_boolean()) return ConfigError(absl::StrCat(name, " must be true or false"));
    **std::get_if<bool*>(&field) = value.get<bool>();
  }
  return absl::OkStatus();
}

// Fills the named fields of one JSON object; unknown keys are errors.
absl::Status ReadObject(const json& obj, const std::string& prefix,
                        const std::vector<std::pair<std::string, Field>>& fields) {
  if (!obj.is_object()) return ConfigError(absl::StrCat(prefix, " must be an object"));
  for (const auto& [key, value] : obj.items()) {
    const std::string name = prefix.empty() ? key : absl::StrCat(prefix, ".", key);
    // A named copy: clang before 16 cannot capture a structured binding.
    const std::string& field = key;
    auto it =
        std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return f.first == field; });
    if (it != fields.end()) {
      KVG_RETURN_IF_ERROR(ReadField(value, name, it->second));
    } else if (!key.starts_with("_")) {
      return ConfigError(absl::StrCat("unknown key '", name, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadLevel(const json& obj, const std::string& name, LevelConfig& level) {
  return ReadObject(obj, name,
                    {{"enter", &level.enter},
                     {"exit", &level.exit},
                     {"enter_steps", &level.enter_steps},
                     {"exit_steps", &level.exit_steps},
                     {"min_dwell", &level.min_dwell}});
}

absl::Status ValidateLevel(const LevelConfig& l, const std::string& name) {
  if (!(l.enter >= 0 && l.enter <= 1)) {
    return ConfigError(absl::StrCat(name, ".enter must be in [0, 1] (got ", l.enter, ")"));
  }
  if (!(l.exit >= 0 && l.exit <= l.enter)) {
    return ConfigError(absl::StrCat(name, ".exit must be in [0, ", name, ".enter = ", l.enter,
                                    "] (got ", l.exit, ")"));
  }
  if (l.enter_steps < 1) return ConfigError(absl::StrCat(name, ".enter_steps must be >= 1"));
  if (l.exit_steps < 1) return ConfigError(absl::StrCat(name, ".exit_steps must be >= 1"));
  if (l.min_dwell < 0) return ConfigError(absl::StrCat(name, ".min_dwell must be >= 0"));
  return absl::OkStatus();
}

json LevelJson(const LevelConfig& l) {
  return {{"enter", l.enter},
          {"exit", l.exit},
          {"enter_steps", l.enter_steps},
          {"exit_steps", l.exit_steps},
          {"min_dwell", l.min_dwell}};
}

json AdmissionJson(const std::map<std::string, AdmissionRule>& rules) {
  json out = json::object();
  for (const auto& [compressor, r] : rules) {
    out[compressor] = {{"probe_tokens", r.probe_tokens},
                       {"threshold", r.threshold},
                       {"min_requested_ratio", r.min_requested_ratio},
                       {"restart_ratio", r.restart_ratio}};
  }
  return out;
}

}  // namespace

// ---- config -----------------------------------------------------------------------

absl::StatusOr<ControllerConfig> ControllerConfig::FromJson(const json& j) {
  ControllerConfig c;
  if (!j.is_object()) return ConfigError("the top level must be a JSON object");
  json top = j;
  json alert = top.contains("alert") ? top["alert"] : json::object();
  json safe = top.contains("safe") ? top["safe"] : json::object();
  json recovery = top.contains("recovery") ? top["recovery"] : json::object();
  json admission = top.contains("admission") ? top["admission"] : json::object();
  for (const char* section : {"alert", "safe", "recovery", "admission", "fallback_hazard"})
    top.erase(section);
  KVG_RETURN_IF_ERROR(ReadObject(top, "",
                                 {{"alert_ratio_scale", &c.alert_ratio_scale},
                                  {"r_safe", &c.r_safe},
                                  {"protect_recent", &c.protect_recent},
                                  {"max_thinking_protect", &c.max_thinking_protect},
                                  {"quiet_steps", &c.quiet_steps}}));
  KVG_RETURN_IF_ERROR(ReadLevel(alert, "alert", c.alert));
  KVG_RETURN_IF_ERROR(ReadLevel(safe, "safe", c.safe));
  KVG_RETURN_IF_ERROR(ReadObject(recovery, "recovery",
                                 {{"enabled", &c.recovery.enabled},
                                  {"enter", &c.recovery.enter},
                                  {"enter_steps", &c.recovery.enter_steps},
                                  {"top_n", &c.recovery.top_n},
                                  {"cooldown", &c.recovery.cooldown},
                                  {"pin", &c.recovery.pin}}));
  if (!admission.is_object())
    return ConfigError("admission must be an object of compressor -> rule");
  for (const auto& [compressor, rule] : admission.items()) {
    if (compressor.starts_with("_")) continue;
    AdmissionRule& r = c.admission[compressor];
    KVG_RETURN_IF_ERROR(ReadObject(rule, "admission." + compressor,
                                   {{"probe_tokens", &r.probe_tokens},
                                    {"threshold", &r.threshold},
                                    {"min_requested_ratio", &r.min_requested_ratio},
                                    {"restart_ratio", &r.restart_ratio}}));
  }
  KVG_RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<ControllerConfig> ControllerConfig::Load(const std::string& path) {
  KVG_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return ConfigError(absl::StrCat(path, " is not valid JSON"));
  auto config = FromJson(j);
  if (!config.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

absl::Status ControllerConfig::Validate() const {
  KVG_RETURN_IF_ERROR(ValidateLevel(alert, "alert"));
  KVG_RETURN_IF_ERROR(ValidateLevel(safe, "safe"));
  if (safe.enter < alert.enter) {
    return ConfigError(
        absl::StrCat("safe.enter (", safe.enter, ") must be >= alert.enter (", alert.enter, ")"));
  }
  if (!(recovery.enter >= 0 && recovery.enter <= 1)) {
    return ConfigError(absl::StrCat("recovery.enter must be in [0, 1] (got ", recovery.enter, ")"));
  }
  if (recovery.enter_steps < 1) return ConfigError("recovery.enter_steps must be >= 1");
  if (recovery.top_n < 1) return ConfigError("recovery.top_n must be >= 1");
  if (recovery.cooldown < 0) return ConfigError("recovery.cooldown must be >= 0");
  if (!(alert_ratio_scale >= 0 && alert_ratio_scale <= 1)) {
    return ConfigError(
        absl::StrCat("alert_ratio_scale must be in [0, 1] (got ", alert_ratio_scale, ")"));
  }
  if (!(r_safe >= 0 && r_safe < 1)) {
    return ConfigError(absl::StrCat("r_safe must be in [0, 1) (got ", r_safe, ")"));
  }
  if (protect_recent < 0) return ConfigError("protect_recent must be >= 0");
  if (max_thinking_protect < 0) return ConfigError("max_thinking_protect must be >= 0");
  if (quiet_steps < 1 || quiet_steps > 64) return ConfigError("quiet_steps must be in [1, 64]");
  for (const auto& [compressor, r] : admission) {
    const std::string name = "admission." + compressor;
    if (r.probe_tokens < 1) return ConfigError(name + ".probe_tokens must be >= 1");
    if (!(r.threshold >= 0 && r.threshold <= 1))
      return ConfigError(name + ".threshold must be in [0, 1]");
    if (!(r.restart_ratio >= 0 && r.restart_ratio < r.min_requested_ratio &&
          r.min_requested_ratio < 1)) {
      return ConfigError(name + " needs 0 <= restart_ratio < min_requested_ratio < 1");
    }
  }
  return absl::OkStatus();
}

const AdmissionRule* ControllerConfig::AdmissionFor(const std::string& compressor) const {
  auto it = admission.find(compressor);
  if (it == admission.end()) it = admission.find("*");
  return it == admission.end() ? nullptr : &it->second;
}

json ControllerConfig::ToJson() const {
  return {{"alert", LevelJson(alert)},
          {"safe", LevelJson(safe)},
          {"recovery",
           {{"enabled", recovery.enabled},
            {"enter", recovery.enter},
            {"enter_steps", recovery.enter_steps},
            {"top_n", recovery.top_n},
            {"cooldown", recovery.cooldown},
            {"pin", recovery.pin}}},
          {"alert_ratio_scale", alert_ratio_scale},
          {"r_safe", r_safe},
          {"protect_recent", protect_recent},
          {"max_thinking_protect", max_thinking_protect},
          {"quiet_steps", quiet_steps},
          {"admission", AdmissionJson(admission)}};
}

// ---- controller ---------------------------------------------------------------------

ModeController::ModeController(const ControllerConfig& config) : config_(config) {}

Decision ModeController::Step(const StepInput& in) {
  Observe(in);
  Decision d;
  d.previous_mode = mode_;
  const v1::Mode next = NextMode(in.hazard);
  if (next != mode_) Enter(next);
  d.mode = mode_;
  switch (mode_) {
    case v1::MODE_ALERT:
      d.target_ratio = in.requested_ratio * config_.alert_ratio_scale;
      break;
    case v1::MODE_SAFE:
    case v1::MODE_RECOVERY:
      d.target_ratio = std::min(in.requested_ratio, config_.r_safe);
      break;
    default:
      d.target_ratio = in.requested_ratio;
  }
  if (mode_ == v1::MODE_RECOVERY) {
    d.recompute_positions = TopEvicted();
    last_recovery_ = step_;
    if (config_.recovery.pin)
      pinned_.insert(d.recompute_positions.begin(), d.recompute_positions.end());
  }
  if (mode_ != v1::MODE_NORMAL) {
    d.protect_positions = Protected(in.position, d.recompute_positions);
  } else {
    d.protect_positions.assign(pinned_.begin(), pinned_.end());
  }
  // Admission: within the probe (and the server's hold-back), a high hazard
  // restarts the session at a lower ratio, once. Once no restart can come
  // (no rule applies, or this was the probe's last step), the server may
  // stream what it holds back.
  const AdmissionRule* rule = in.admission;
  const bool applies = rule != nullptr && !restart_requested_ &&
                       in.requested_ratio >= rule->min_requested_ratio - 1e-9;
  const int64_t probe = applies ? std::min<int64_t>(rule->probe_tokens, in.holdback_tokens) : 0;
  if (applies && step_ < probe && in.hazard >= rule->threshold) {
    d.restart_ratio = rule->restart_ratio;
    restart_requested_ = true;
  }
  d.release_held = in.holdback_tokens > 0 && !d.restart_ratio && step_ + 1 >= probe;
  ++dwell_;
  ++step_;
  return d;
}

int ModeController::QuietSteps(float hazard) const {
  if (mode_ != v1::MODE_NORMAL) return 1;
  if (hazard < config_.alert.exit) return config_.quiet_steps;
  return std::max(1, config_.alert.enter_steps - up_count_);
}

void ModeController::Observe(const StepInput& in) {
  if (in.thinking && in.position >= 0 && config_.max_thinking_protect > 0) {
    thinking_positions_.push_back(in.position);
    while (static_cast<int>(thinking_positions_.size()) > config_.max_thinking_protect) {
      thinking_positions_.pop_front();
    }
  }
  for (size_t i = 0; i < in.evicted_positions.size(); ++i) {
    // Attention may be missing (not gathered): such positions rank last.
    const float attention = i < in.evicted_attention.size() ? in.evicted_attention[i] : 0.0f;
    auto [it, inserted] = evicted_.emplace(in.evicted_positions[i], attention);
    if (!inserted) it->second = std::max(it->second, attention);
  }
}

v1::Mode ModeController::NextMode(float hazard) {
  auto count = [](int& counter, bool condition) { counter = condition ? counter + 1 : 0; };
  switch (mode_) {
    case v1::MODE_RECOVERY:
      return v1::MODE_SAFE;  // RECOVERY lasts exactly one step
    case v1::MODE_NORMAL:
      count(up_count_, hazard > config_.alert.enter);
      return up_count_ >= config_.alert.enter_steps ? v1::MODE_ALERT : v1::MODE_NORMAL;
    case v1::MODE_ALERT:
      count(up_count_, hazard > config_.safe.enter);
      count(down_count_, hazard < config_.alert.exit);
      if (up_count_ >= config_.safe.enter_steps) return v1::MODE_SAFE;
      if (down_count_ >= config_.alert.exit_steps && dwell_ >= config_.alert.min_dwell) {
        return v1::MODE_NORMAL;
      }
      return v1::MODE_ALERT;
    case v1::MODE_SAFE: {
      const RecoveryConfig& r = config_.recovery;
      count(recovery_count_, r.enabled && hazard > r.enter);
      count(down_count_, hazard < config_.safe.exit);
      const bool cooled = last_recovery_ < 0 || step_ - last_recovery_ >= r.cooldown;
      if (recovery_count_ >= r.enter_steps && cooled && !evicted_.empty()) {
        return v1::MODE_RECOVERY;
      }
      if (down_count_ >= config_.safe.exit_steps && dwell_ >= config_.safe.min_dwell) {
        return v1::MODE_ALERT;
      }
      return v1::MODE_SAFE;
    }
    default:
      return v1::MODE_NORMAL;
  }
}

void ModeController::Enter(v1::Mode mode) {
  mode_ = mode;
  dwell_ = 0;
  up_count_ = down_count_ = recovery_count_ = 0;
}

std::vector<int32_t> ModeController::TopEvicted() {
  std::vector<std::pair<float, int32_t>> ranked;
  ranked.reserve(evicted_.size());
  for (const auto& [position, attention] : evicted_) ranked.emplace_back(attention, position);
  const size_t n = std::min<size_t>(ranked.size(), config_.recovery.top_n);
  // Most attention first; ties by position, so the choice is deterministic.
  std::partial_sort(ranked.begin(), ranked.begin() + n, ranked.end(),
                    [](const auto& a, const auto& b) {
                      return a.first != b.first ? a.first > b.first : a.second < b.second;
                    });
  std::vector<int32_t> out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(ranked[i].second);
    evicted_.erase(ranked[i].second);  // restored: no longer a candidate
  }
  return out;
}

std::vector<int32_t> ModeController::Protected(int32_t position,
                                               const std::vector<int32_t>& extra) const {
  std::vector<int32_t> out(thinking_positions_.begin(), thinking_positions_.end());
  if (position >= 0) {
    for (int32_t p = std::max(0, position - config_.protect_recent + 1); p <= position; ++p) {
      out.push_back(p);
    }
  }
  out.insert(out.end(), extra.begin(), extra.end());
  out.insert(out.end(), pinned_.begin(), pinned_.end());
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace kvguard::guard
