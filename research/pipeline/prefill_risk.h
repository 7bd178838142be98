// File: research/pipeline/prefill_risk.h
//
// An admission-time signal of answer loss: how much of what the prompt's final
// question attends to would the prefill compression evict. The question
// (from "Question:" to the end of the prompt) is what the answer is computed
// from; if its queries put their attention mass on positions the compressor
// drops, the facts are likely gone. Unlike the mean attention every prompt
// query gave the evicted positions (the traces' prefill_evicted_attention,
// dominated by the few-shot examples and filler), this reads only the
// question's rows, per layer and head, against what that head kept.
//
//   research::RunPrefillRisk({.model_path = ..., .out_path = "risk.jsonl", ...}, progress);
//
// The tensor work is in question_attention.h; this header stays torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "research/prompt_set.h"

namespace kvguard::research {

struct PrefillRiskOptions {
  std::string model_path;
  std::string out_path;  // JSONL, one line per (prompt, compressor, ratio)
  std::vector<std::string> compressors = {"snapkv", "tova", "streaming_llm"};
  std::vector<double> ratios = {0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375};
  std::vector<std::string> compressor_options;  // "name:key=value", as the sweep's
  PromptSetSpec prompt_set;
  int threads = 0;
};

// For each prompt: the question attention once, then a prefill with each
// compressor and ratio exactly as the sweep runs it (same Sequence options),
// and the evicted question mass. Progress: (done, total) prefills.
absl::Status RunPrefillRisk(const PrefillRiskOptions& options,
                            const std::function<void(int64_t, int64_t)>& progress);

}  // namespace kvguard::research
