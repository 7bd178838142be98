// File: compressors/builtin/key_scores.h
//
// Per-slot importance scores shared by several compressors (the single-rule
// built-ins and VECTOR's base scorer), so each formula lives in one place.
// All return [kv_heads, T] float32, higher = more worth keeping.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "services/engine/kv_cache.h"

namespace kvguard::compress {

// Knorm: -||k_j|| on post-RoPE keys [kv_heads, T, hd].
at::Tensor KnormScore(const at::Tensor& keys);

// KeyDiff: -cos(k_j, mean_j k_j/||k_j||) on keys [kv_heads, T, hd].
at::Tensor KeyDiffScore(const at::Tensor& keys);

// ObservedAttention / H2O: mean attention each retained slot received,
// averaged over the GQA group. FailedPrecondition when the sums were not
// gathered (the cache was created without AttentionNeeds::attention_sums).
absl::StatusOr<at::Tensor> ObservedAttentionScore(const engine::SequenceKvCache& cache,
                                                  int64_t layer);

}  // namespace kvguard::compress
