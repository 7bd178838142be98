// File: research/pipeline/question_attention.h
//
// The tensors behind `kvguard prefill-risk` (prefill_risk.h): the attention
// of the prompt's final question over the uncompressed prompt, and the share
// of it on positions a compressed prefill dropped.
//
//   KVG_ASSIGN_OR_RETURN(QuestionAttention qa, QuestionAttentionOf(model, ids, begin));
//   ... prefill a compressed Sequence on the same ids ...
//   std::vector<double> per_layer = EvictedQuestionMass(qa, seq->cache());
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
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

}  // namespace kvguard::research
