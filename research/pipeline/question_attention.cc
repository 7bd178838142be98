#include "research/pipeline/question_attention.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvguard::research {

absl::StatusOr<QuestionAttention> QuestionAttentionOf(engine::LlamaModel& model,
                                                      const std::vector<int32_t>& ids,
                                                      int64_t question_begin) {
  const auto n = static_cast<int64_t>(ids.size());
  if (question_begin < 0 || question_begin >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("question begins at ", question_begin, " of a ", n, "-token prompt"));
  }
  engine::AttentionNeeds needs;
  needs.question_begin = question_begin;
  needs.question_end = n;
  engine::SequenceKvCache cache(model.CacheOptions(n, needs));
  engine::ForwardItem item{.cache = &cache, .tokens = ids};
  KVG_RETURN_IF_ERROR(model.Forward({&item, 1}).status());
  const engine::ModelConfig& config = model.config();
  QuestionAttention qa{.question_begin = question_begin,
                       .group = config.num_heads / config.num_kv_heads};
  const int64_t nq = n - question_begin;
  // Query i sits at position question_begin + i and sees keys 0..that position.
  const at::Tensor key_pos = at::arange(n, at::kLong).view({1, 1, n});
  const at::Tensor query_pos = at::arange(question_begin, n, at::kLong).view({1, nq, 1});
  const at::Tensor future = key_pos.gt(query_pos);
  const double scale = 1.0 / std::sqrt(static_cast<double>(config.head_dim));
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const at::Tensor q = cache.AttentionStats(l).question_queries.to(at::kFloat);      // [h, nq, d]
    const at::Tensor k = cache.Keys(l).to(at::kFloat).repeat_interleave(qa.group, 0);  // [h, n, d]
    at::Tensor scores = at::matmul(q, k.transpose(1, 2)).mul_(scale);
    scores.masked_fill_(future, -std::numeric_limits<float>::infinity());
    qa.probs.push_back(at::softmax(scores, -1).cpu().contiguous());
  }
  return qa;
}

std::vector<double> EvictedQuestionMass(const QuestionAttention& qa,
                                        const engine::SequenceKvCache& compressed) {
  std::vector<double> out;
  for (size_t l = 0; l < qa.probs.size(); ++l) {
    const at::Tensor& probs = qa.probs[l];
    const int64_t heads = probs.size(0), n = probs.size(2);
    const auto& positions = compressed.Positions(static_cast<int64_t>(l));
    at::Tensor kept = at::zeros({static_cast<int64_t>(positions.size()), n}, at::kFloat);
    auto acc = kept.accessor<float, 2>();
    for (size_t h = 0; h < positions.size(); ++h) {
      for (int32_t p : positions[h]) {
        if (p < n) acc[static_cast<int64_t>(h)][p] = 1.0f;
      }
    }
    // [heads, nq, n] * [heads, 1, n]: each query head reads its kv head's kept set.
    const at::Tensor kept_heads = kept.repeat_interleave(qa.group, 0).view({heads, 1, n});
    const double retained = (probs * kept_heads).sum(-1).mean().item<double>();
    out.push_back(1.0 - retained);
  }
  return out;
}

}  // namespace kvguard::research
