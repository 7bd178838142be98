// File: research/pipeline/evaluate.h
//
// `kvguard evaluate`: CFR vs budget, static vs guarded.
//  (a) offline: the trained hazard model and the real mode controller replayed
//      on held-out prompts' traces. Controller thresholds are chosen on the
//      validation prompts (lowest alert threshold whose false-positive rate,
//      the share of non-catastrophic traces that leave NORMAL, is <= 5%) and
//      applied once to the test prompts. A catastrophic trace counts as
//      averted offline when the controller leaves NORMAL before its onset.
//  (b) live (--live): the same test prompts through a real kvguard-server and
//      kvguard-guard on loopback, per compressor and ratio: static, guarded,
//      and guarded without RECOVERY; CFR with Wilson intervals, the CFR
//      reduction with a Newcombe interval, the memory savings kept, and the
//      live false-positive rate.
// Writes evaluation.{md,json,csv}, cfr_vs_ratio_<compressor>.svg and the
// chosen controller.json.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace kvguard::research {

struct EvaluateOptions {
  std::string model_dir;      // the LM (live runs)
  std::string traces_dir;     // sweep output
  std::string predictor_dir;  // train-predictor output (hazard.json, report.json)
  std::string out_dir;
  std::string controller_config;  // base config; thresholds are tuned on top
  bool live = false;
  std::string bin_dir;  // kvguard-server / kvguard-guard
  int concurrency = 8;
  int max_new_tokens = 256;
  // Decode-time loop breakers of every live request; the live run takes them from the sweep's
  // manifest, so it decodes as the traces it was tuned on were decoded.
  double repetition_penalty = 1.0;
  int no_repeat_ngram = 0;
  double target_fpr = 0.05;
  // Where the FPR bound must hold when tuning: in every (compressor, ratio)
  // configuration with >= 10 clean validation traces (default), or pooled
  // over all of them (the prototype's reading; lets high ratios run hotter).
  bool fpr_per_config = true;
  uint64_t seed = 0;
  int probe_tokens = 16;  // probe-and-restart admission policies (admission.h)
  bool admission = true;  // tune them and give them to the live guard (controller.json "admission")
};

// `live_progress` (optional): (live runs done, total), called from worker threads under a lock.
absl::Status Evaluate(const EvaluateOptions& options, std::string* summary_markdown,
                      const std::function<void(int64_t, int64_t)>& live_progress = nullptr);

}  // namespace kvguard::research
