// File: research/pipeline/predictor.h
//
// `kvguard train-predictor`: the XGBoost hazard model on sweep traces, with
// the methodology the prototype's audit asked for:
//  - label: token t is positive when its trace is catastrophic and the onset
//    lies within the next H tokens (or has passed); pre-onset tokens are
//    evaluated on their own (post-onset tokens are easy and inflate AUROC);
//    non-termination has no token onset: the proxy is the token after the
//    last 20-token window never seen before (research::ProgressStallOnset);
//  - splits by prompt everywhere (train / val / test, stratified by whether
//    the prompt ever fails), also inside leave-one-compressor-out CV, where
//    the uncompressed configuration is never a fold;
//  - ablations (full, no_ratio, no_repetition, logit_only) with the columns
//    really absent from the matrices;
//  - reports AUROC (all / pre-onset), recall at 5% FPR, trace-level
//    detection rate, false alarms and lead time; saves the full model.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "guard_sidecar/hazard_model.h"
#include "research/pipeline/traces.h"

namespace kvguard::research {

enum class PromptSet { kTrain, kVal, kTest };

// The training label of token `token` of `t`: its trace is catastrophic and
// the onset lies within the next `horizon` tokens or has passed.
bool TokenLabel(const Trace& t, int64_t token, int horizon);
// Tokens before the onset (every token of a trace without one): the ones the
// pre-onset AUROC and recall are measured on.
bool PreOnset(const Trace& t, int64_t token);

// Deterministic, stratified by whether the prompt ever fails in `traces`.
std::map<std::string, PromptSet> SplitPrompts(const std::vector<Trace>& traces, uint64_t seed,
                                              double val_fraction = 0.2,
                                              double test_fraction = 0.2);

struct PredictorOptions {
  std::string traces_dir;
  std::string out_dir;
  int horizon = 32;
  uint64_t seed = 0;
  double target_fpr = 0.05;
  guard::TrainParams params;
};

absl::Status TrainPredictor(const PredictorOptions& options, std::string* summary_markdown);

}  // namespace kvguard::research
