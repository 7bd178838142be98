#include "compressors/builtin/key_scores.h"

#include <ATen/ATen.h>

namespace kvguard::compress {

at::Tensor KnormScore(const at::Tensor& keys) { return -keys.to(at::kFloat).norm(2, -1); }

at::Tensor KeyDiffScore(const at::Tensor& keys) {
  at::Tensor k = keys.to(at::kFloat);  // [hkv, T, hd]
  // F.normalize (eps 1e-12), then F.cosine_similarity (eps 1e-8), as kvpress.
  at::Tensor unit = k / k.norm(2, -1, true).clamp_min(1e-12);
  at::Tensor anchor = unit.mean(1, true);  // [hkv, 1, hd]
  at::Tensor dot = (k * anchor).sum(-1);
  at::Tensor denom = (k.norm(2, -1) * anchor.norm(2, -1)).clamp_min(1e-8);
  return -(dot / denom);
}

absl::StatusOr<at::Tensor> ObservedAttentionScore(const engine::SequenceKvCache& cache,
                                                  int64_t layer) {
  at::Tensor sum = cache.AttentionSum(layer);      // [hkv, g, T]
  at::Tensor count = cache.AttentionCount(layer);  // [hkv, T]
  if (!sum.defined()) {
    return absl::FailedPreconditionError("attention sums were not gathered");
  }
  return (sum / count.clamp_min(1).unsqueeze(1)).mean(1);
}

}  // namespace kvguard::compress
