#include "research/pipeline/admission.h"

#include <algorithm>
#include <set>
#include <tuple>

#include "absl/strings/str_format.h"

namespace kvguard::research {
namespace {

using TraceKey = std::tuple<std::string, std::string, double>;  // prompt, compressor, ratio

std::map<TraceKey, const Trace*> Index(const std::vector<const Trace*>& traces) {
  std::map<TraceKey, const Trace*> out;
  for (const Trace* t : traces) out[{t->prompt_id, t->compressor, t->ratio}] = t;
  return out;
}

bool ProbeAlarms(const std::vector<float>& hazard, int probe_tokens, double threshold) {
  const int64_t n = std::min<int64_t>(probe_tokens, static_cast<int64_t>(hazard.size()));
  for (int64_t i = 0; i < n; ++i) {
    if (hazard[i] >= threshold) return true;
  }
  return false;
}

}  // namespace

std::string ProbeRestartPolicy::Arm() const {
  return absl::StrFormat("probe%d@%g>%g", probe_tokens, high_ratio, low_ratio);
}

std::vector<PolicyRecord> ProbeRestartRecords(
    const ProbeRestartPolicy& policy, const std::vector<const Trace*>& traces,
    const std::map<const Trace*, std::vector<float>>& hazards,
    const std::vector<std::string>& feature_names) {
  const auto index = Index(traces);
  std::set<std::string> prompts;
  for (const Trace* t : traces) prompts.insert(t->prompt_id);
  std::vector<PolicyRecord> out;
  for (const std::string& p : prompts) {
    auto hi = index.find({p, policy.compressor, policy.high_ratio});
    auto lo = index.find({p, policy.compressor, policy.low_ratio});
    if (hi == index.end() || lo == index.end()) continue;
    const bool restart = ProbeAlarms(hazards.at(hi->second), policy.probe_tokens, policy.threshold);
    PolicyRecord r = StaticRecord(restart ? *lo->second : *hi->second, feature_names);
    r.arm = policy.Arm();
    r.requested_ratio = policy.high_ratio;
    r.mode_steps = {{restart ? "restarted" : "kept", 1}};
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<TunedPolicy> TuneProbeRestart(const std::vector<const Trace*>& val,
                                          const std::map<const Trace*, std::vector<float>>& hazards,
                                          const std::vector<std::string>& feature_names,
                                          int probe_tokens) {
  std::map<std::string, std::set<double>> ratios;
  std::vector<PolicyRecord> static_records;
  for (const Trace* t : val) {
    if (t->compressor != "none") ratios[t->compressor].insert(t->ratio);
    static_records.push_back(StaticRecord(*t, feature_names));
  }
  std::vector<TunedPolicy> out;
  for (const auto& [compressor, rs] : ratios) {
    std::optional<TunedPolicy> best;
    for (double high : rs) {
      for (double low : rs) {
        if (low >= high) continue;
        for (double tau = 0.05; tau < 0.96; tau += 0.05) {
          ProbeRestartPolicy policy{.compressor = compressor,
                                    .high_ratio = high,
                                    .low_ratio = low,
                                    .probe_tokens = probe_tokens,
                                    .threshold = tau};
          std::vector<PolicyRecord> records = static_records;
          auto mine = ProbeRestartRecords(policy, val, hazards, feature_names);
          if (mine.empty()) continue;
          records.insert(records.end(), mine.begin(), mine.end());
          auto r = EvaluateFrontier(records, compressor, policy.Arm(), {.resamples = 0});
          if (!r.ok() || !r->hull_cfr) continue;
          const double gap = *r->hull_cfr - r->guard_cfr.value;
          if (!best || gap > best->val_gap) {
            best = TunedPolicy{.policy = policy,
                               .val_gap = gap,
                               .val_savings = r->guard_cfr.savings,
                               .val_cfr = r->guard_cfr.value};
          }
        }
      }
    }
    if (best && best->val_gap > 0) out.push_back(*best);
  }
  return out;
}

}  // namespace kvguard::research
