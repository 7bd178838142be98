// File: research/prompt_set.h
//
// Where the research pipeline's prompts come from: the project's own
// arithmetic problems (research/problems.h), or GSM8K few-shot
// chain-of-thought prompts for a real checkpoint (Qwen2.5-3B-Instruct and the
// like, on a GPU). Both give Problems (id, prompt, gold answer), so `kvguard
// sweep` and `kvguard evaluate` run unchanged on either; the trace manifest
// records the spec, and evaluate rebuilds the same prompts from it.
//
//   PromptSetSpec spec{.dataset = "gsm8k", .data_dir = "data/gsm8k", .shots = 8,
//                      .split = Split::kTest, .count = 200};
//   KVG_ASSIGN_OR_RETURN(std::vector<Problem> prompts, LoadPrompts(spec));
//   request.stop_strings = spec.StopStrings();
//
// GSM8K layout: data_dir/{train,test}.jsonl, one {"question", "answer"} per
// line, the answer's last line "#### N". A prompt is `shots` worked examples
// from the first train lines ("Question: q\nAnswer: <solution, calculator
// annotations <<...>> removed>\n#### N\n\n") and then "Question: q\nAnswer:".
// Splits: test = test.jsonl; train and val = train.jsonl past the shots (val
// is its last 10%). Ids are "gsm8k-<split>-<line index, 6 digits>".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"
#include "research/problems.h"

namespace kvguard::research {

struct PromptSetSpec {
  std::string dataset = "arith";  // "arith" | "gsm8k"
  ProblemOptions problem_options;  // arith
  std::string data_dir;            // gsm8k
  int shots = 8;                   // gsm8k: worked examples before the question
  Split split = Split::kTest;
  int64_t first = 0;
  int64_t count = 100;

  // Strings that end a generation: GSM8K's few-shot model would otherwise go
  // on with the next "Question:"; the arithmetic model stops with EOS.
  [[nodiscard]] std::vector<std::string> StopStrings() const;
};

absl::StatusOr<std::vector<Problem>> LoadPrompts(const PromptSetSpec& spec);

// For trace manifests: every field, so the same prompts can be rebuilt.
nlohmann::json ToJson(const PromptSetSpec& spec);
absl::StatusOr<PromptSetSpec> PromptSetFromJson(const nlohmann::json& json);

// "Natalia sold <<48/2=24>>24 clips" -> "Natalia sold 24 clips".
std::string StripCalculatorAnnotations(std::string_view solution);

}  // namespace kvguard::research
