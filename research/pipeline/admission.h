// File: research/pipeline/admission.h
//
// Probe-and-restart: a per-request ratio chosen after a short probe, simulated
// exactly from a sweep's traces. In the regime the test bed models, the damage
// is done at prefill: high-ratio compression of a long prompt evicts the facts
// the answer needs, and the per-token guard only sees it once decoding goes
// wrong. The policy decodes the first `probe_tokens` tokens at the high ratio;
// if the hazard model's score reaches `threshold` there, it restarts the
// request at the low ratio (re-prefill, the probe tokens discarded), else it
// keeps going at the high ratio. Per prompt, its outcome is therefore exactly
// the high-ratio trace's or the low-ratio trace's, so the policy's records
// come from the traces without running anything. The threshold and the ratio
// pair are tuned on validation prompts (largest CFR gap below the static hull)
// and applied once to the test prompts.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "research/pipeline/frontier.h"
#include "research/pipeline/traces.h"

namespace kvguard::research {

struct ProbeRestartPolicy {
  std::string compressor;
  double high_ratio = 0.875, low_ratio = 0.5;
  int probe_tokens = 16;
  double threshold = 0.5;
  std::string Arm() const;  // "probe16@0.875>0.5"
};

// Records of `policy` on `prompts`: the high-ratio trace's outcome unless the
// hazard reached the threshold within the probe, then the low-ratio trace's
// (its savings lowered by nothing: the discarded probe is a few tokens).
// Prompts lacking either trace are skipped.
std::vector<PolicyRecord> ProbeRestartRecords(
    const ProbeRestartPolicy& policy, const std::vector<const Trace*>& traces,
    const std::map<const Trace*, std::vector<float>>& hazards,
    const std::vector<std::string>& feature_names);

struct TunedPolicy {
  ProbeRestartPolicy policy;
  double val_gap = 0;  // hull CFR - policy CFR on the validation prompts
  double val_savings = 0, val_cfr = 0;
};

// Per compressor, the (high, low, threshold) with the largest validation gap
// among those whose savings stay inside the static range; none when no
// candidate lies below the validation hull.
std::vector<TunedPolicy> TuneProbeRestart(const std::vector<const Trace*>& val,
                                          const std::map<const Trace*, std::vector<float>>& hazards,
                                          const std::vector<std::string>& feature_names,
                                          int probe_tokens);

}  // namespace kvguard::research
