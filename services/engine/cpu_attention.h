// File: services/engine/cpu_attention.h
//
// The attention half of a CPU decode step as plain loops (no torch): RoPE on
// one token's query and key heads, and that token's attention over its
// sequence's cache read in place (KvSpan: no gather, no copies). Scores are
// K q products and the output is p V, both through cpu::MatVec / VecMat, so
// they run on the same AVX-512/AVX2 paths as the projections.
//
// With bf16 activations every step is rounded where the libtorch path
// (LlamaModel's reference ops) rounds, so both paths give the same logits up
// to summation order; tests/unit/engine/cpu_decode_test.cc checks that.
#pragma once

#include <cstdint>
#include <span>

#include "services/engine/cpu_matvec.h"
#include "services/engine/kv_span.h"

namespace kvguard::engine::cpu {

// x: [heads, head_dim] of `type`, rotated in place in RoPE's halves layout:
// x * cos + rotate_half(x) * sin with cos, sin: [head_dim] of `type` (one
// position). bf16 rounds both products and their sum, as the three ops do.
void RopeHeads(void* x, OutputType type, int64_t heads, int64_t head_dim, const void* cos,
               const void* sin);

struct AttentionShape {
  int64_t heads = 0;     // query heads
  int64_t kv_heads = 0;  // query head h reads kv head h / (heads / kv_heads)
  int64_t head_dim = 0;
};

// One token's attention over the entries in `spans` (its own key and value
// among them): out[h] = softmax(q[h] . K / sqrt(head_dim)) V for every query
// head. q: [heads, head_dim] of `type`; the spans hold `type` entries; out:
// [heads * head_dim] f32 (bf16: holding bf16-rounded values). kv heads are
// split over `threads` OpenMP threads when the cache is long enough. With
// `prob_sums` (f32, head h's row at h * sums_stride, at least entries long)
// the unrounded probabilities are added there too (H2O-style attention
// statistics), in the softmax's own pass.
void DecodeAttention(const void* q, OutputType type, const AttentionShape& shape,
                     std::span<const KvSpan> spans, float* out, int threads,
                     float* prob_sums = nullptr, int64_t sums_stride = 0);

// A prefill's attention: the last n entries of `spans` are n new tokens, and
// new token i attends causally to every entry up to its own. Nothing of size
// n x entries is built: blocks of queries go through the kernels above, so
// memory stays per block. q: [n, heads, head_dim] of `type`; out: [n, heads *
// head_dim] f32 (bf16: bf16-rounded values). With `prob_sums` ([heads,
// entries] f32, accumulated into) each query's probabilities are added, for
// H2O-style attention statistics. Splits (kv head, query block) pairs over
// `threads` OpenMP threads.
void PrefillAttention(const void* q, OutputType type, const AttentionShape& shape,
                      std::span<const KvSpan> spans, int64_t n, float* out, float* prob_sums,
                      int threads);

}  // namespace kvguard::engine::cpu
