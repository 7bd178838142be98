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
//   KVG_ASSIGN_OR_RETURN(QuestionAttention qa, QuestionAttentionOf(model, ids, begin));
//   ... prefill a compressed Sequence on the same ids ...
//   std::vector<double> per_layer = EvictedQuestionMass(qa, seq->cache());
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "research/prompt_set.h"
#include "services/engine/kv_cache.h"
#include "services/engine/llama_model.h"

namespace kvguard::research {

// Attention of the question's queries over the whole uncompressed prompt.
struct QuestionAttention {
  std::vector<at::Tensor> probs;  // per layer [heads, question tokens, prompt tokens] float32
  int64_t question_begin = 0;     // position of the first question token
  int64_t group = 1;              // query heads per kv head
};

// Prefills `ids` uncompressed and returns the softmax attention (causal) of
// the queries at positions [question_begin, ids.size()).
absl::StatusOr<QuestionAttention> QuestionAttentionOf(engine::LlamaModel& model,
                                                      const std::vector<int32_t>& ids,
                                                      int64_t question_begin);

// Per layer, the question attention mass on positions that `compressed` (a
// cache of the same prompt) no longer holds in the query's kv head: mean over
// heads and question queries, in [0, 1].
std::vector<double> EvictedQuestionMass(const QuestionAttention& qa,
                                        const engine::SequenceKvCache& compressed);

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
