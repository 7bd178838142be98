// File: services/engine/kv_cache.h
//
// The KV cache of one sequence. Per layer it stores the post-RoPE keys and the
// values of the *retained* tokens as [kv_heads, slots, head_dim] tensors,
// together with each slot's original position (per kv head, since
// compressors may keep different tokens in different heads). Apart from the
// tensors it keeps the token id of every position the sequence has ever had,
// so evicted entries can be recomputed later (RECOVERY).
//
// Eviction is real: Retain() gathers the kept slots into freshly allocated,
// tightly sized tensors and drops the old ones, so memory is returned.
//
//   SequenceKvCache cache({.num_layers = 2, .num_kv_heads = 2, .head_dim = 16});
//   cache.Append(layer, k, v, /*first_position=*/0);   // k, v: [kv_heads, n, head_dim]
//   at::Tensor keys = cache.Keys(layer);                 // [kv_heads, retained, head_dim]
//   cache.Retain(layer, keep);                           // keep[h] = slot indices
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "services/engine/kv_layer_store.h"

namespace kvguard::engine {

// Attention statistics a compressor asks the engine to gather while it runs
// the forward pass (so no full attention matrix is ever kept).
struct AttentionNeeds {
  int64_t query_window = 0;     // keep post-RoPE queries of the last N tokens (SnapKV, TOVA)
  bool attention_sums = false;  // attention each slot receives, summed over queries (H2O)
  bool query_moments = false;   // running mean/covariance of pre-RoPE queries (ExpectedAttention)
  int64_t query_moments_skip = 0;  // positions below this are left out of the moments (sinks)
  int64_t question_begin = -1;     // keep post-RoPE queries of positions [begin, end) (Q2C)
  int64_t question_end = -1;

  void Merge(const AttentionNeeds& other);
  [[nodiscard]] bool any() const;
};

// Per layer, what the forward pass gathered for the needs above.
struct LayerAttentionStats {
  at::Tensor recent_queries;              // [heads, <= query_window, head_dim], oldest first
  std::vector<int32_t> recent_positions;  // position of each recent query
  at::Tensor attention_sum;               // [kv_heads, group, capacity] float32, per slot
  at::Tensor attention_count;             // [kv_heads, capacity] float32: queries that saw the slot
  at::Tensor query_sum;                   // [heads, head_dim] float64
  at::Tensor query_outer_sum;             // [heads, head_dim, head_dim] float64
  int64_t query_count = 0;
  at::Tensor question_queries;  // [heads, n, head_dim]
  std::vector<int32_t> question_positions;
};

struct KvCacheOptions {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  int64_t reserve_slots = 0;  // slots preallocated per layer (grows by doubling past it)
  int64_t num_heads = 0;      // query heads (for attention statistics)
  AttentionNeeds needs;
  // KIVI-style packed storage for every layer not listed in full_precision_layers.
  bool quantize = false;
  KiviOptions kivi;
  std::vector<int64_t> full_precision_layers;
  // The server's KV pool: every layer's entries come from its blocks
  // (kv_layer_store.h). Null: each layer store allocates its own tensors.
  std::shared_ptr<KvArena> arena;
};

struct KvCacheStats {
  int64_t total_tokens = 0;        // positions the sequence has had (prompt + generated)
  int64_t retained_slots = 0;      // summed over layers and kv heads
  int64_t capacity_slots = 0;      // allocated, summed over layers and kv heads
  int64_t bytes = 0;               // bytes of retained keys + values
  int64_t allocated_bytes = 0;     // bytes held by the tensors, slack included
  int64_t evicted_slots = 0;       // cumulative
  int64_t approximated_slots = 0;  // cumulative (VECTOR)
};

class SequenceKvCache {
 public:
  explicit SequenceKvCache(const KvCacheOptions& options);

  // --- token history (ids of every original position) ---
  void AppendTokenIds(const std::vector<int32_t>& ids);
  [[nodiscard]] const std::vector<int32_t>& token_ids() const { return token_ids_; }
  [[nodiscard]] int64_t num_positions() const { return static_cast<int64_t>(token_ids_.size()); }

  // --- per-layer storage ---
  // Appends n new entries for all heads at positions first_position..+n-1.
  // k, v: [kv_heads, n, head_dim] in the cache's dtype and device.
  void Append(int64_t layer, const at::Tensor& k, const at::Tensor& v, int64_t first_position);
  // The retained entries, [kv_heads, retained, head_dim] (views or dequantized).
  [[nodiscard]] at::Tensor Keys(int64_t layer) const;
  [[nodiscard]] at::Tensor Values(int64_t layer) const;
  // What attention reads: approximated entries (see Approximate) first, then
  // the retained ones, so the newest tokens stay the last columns.
  [[nodiscard]] at::Tensor AttentionKeys(int64_t layer) const;
  [[nodiscard]] at::Tensor AttentionValues(int64_t layer) const;
  // The same entries read in place (kv_span.h), appended to `out`; false
  // (nothing appended) when they exist only as tensors: packed (KIVI) layers
  // and VECTOR's approximated entries. Valid until the layer next changes.
  bool AttentionSpans(int64_t layer, std::vector<KvSpan>& out) const;
  [[nodiscard]] bool quantized(int64_t layer) const { return layers_[layer].quantized; }
  // Original position of each retained slot, per kv head.
  [[nodiscard]] const std::vector<std::vector<int32_t>>& Positions(int64_t layer) const {
    return layers_[layer].positions;
  }
  [[nodiscard]] int64_t RetainedSlots(int64_t layer) const { return layers_[layer].size; }

  // Keeps, in every kv head h, the slots keep[h] (indices into the current
  // slots; all heads keep the same count) and frees the rest. Slots are
  // re-ordered by original position. InvalidArgument on a bad plan.
  absl::Status Retain(int64_t layer, const std::vector<std::vector<int64_t>>& keep);

  // VECTOR's middle route: moves slots approx[h] (equal count per head) out of
  // the retained set into a keys-only pool whose values are predicted as
  // [k, 1] @ regression[h] (regression: [kv_heads, head_dim + 1, head_dim]).
  // Their value memory is freed. Retain() then sees only the retained slots.
  absl::Status Approximate(int64_t layer, const std::vector<std::vector<int64_t>>& approx,
                           const at::Tensor& regression);
  [[nodiscard]] int64_t ApproximatedSlots(int64_t layer) const;
  [[nodiscard]] const std::vector<std::vector<int32_t>>& ApproximatedPositions(
      int64_t layer) const {
    return layers_[layer].approx_positions;
  }

  // Positions every head of every layer holds (retained or approximated in
  // VECTOR's keys-only pool). A position missing from any head counts as
  // evicted: that is what a RECOVERY rebuild puts back. Ascending.
  [[nodiscard]] std::vector<int32_t> WholePositions() const;

  // --- attention statistics (filled by the forward pass; see AttentionNeeds) ---
  [[nodiscard]] const LayerAttentionStats& AttentionStats(int64_t layer) const {
    return layers_[layer].stats;
  }
  LayerAttentionStats& MutableAttentionStats(int64_t layer) { return layers_[layer].stats; }
  // Slot-aligned views [kv_heads, group, retained] / [kv_heads, retained]; undefined when not
  // gathered.
  [[nodiscard]] at::Tensor AttentionSum(int64_t layer) const;
  [[nodiscard]] at::Tensor AttentionCount(int64_t layer) const;

  // --- the KV pool (all 0 / no-ops without an arena) ---
  // Blocks that appending n tokens to every layer would take from the pool.
  [[nodiscard]] int64_t BlocksToAppend(int64_t n) const;
  [[nodiscard]] int64_t BlocksHeld() const;
  // Preemption: frees every block (entries kept outside the pool) / takes
  // them back. SwapIn is all or nothing: ResourceExhausted leaves it out.
  void SwapOut();
  absl::Status SwapIn();
  [[nodiscard]] bool swapped_out() const { return swapped_out_; }
  // Blocks SwapIn() takes.
  [[nodiscard]] int64_t BlocksToSwapIn() const;

  [[nodiscard]] KvCacheStats Stats() const;
  [[nodiscard]] int64_t LayerBytes(int64_t layer) const;
  // What the cache would hold with every position seen retained, dense in its
  // dtype (the baseline for "bytes saved").
  [[nodiscard]] int64_t UncompressedBytes() const;
  [[nodiscard]] const KvCacheOptions& options() const { return options_; }

 private:
  struct Layer {
    std::unique_ptr<LayerStore> store;
    bool quantized = false;
    int64_t size = 0;
    std::vector<std::vector<int32_t>> positions;  // [kv_heads][size]
    LayerAttentionStats stats;
    // VECTOR's approximated entries: keys only, values from the regression.
    at::Tensor approx_keys;                              // [kv_heads, A, head_dim]
    at::Tensor regression;                               // [kv_heads, head_dim + 1, head_dim]
    std::vector<std::vector<int32_t>> approx_positions;  // [kv_heads][A]
  };
  void GrowStats(Layer& layer, int64_t needed);
  at::Tensor IndexTensor(const std::vector<int64_t>& flat, int64_t heads, int64_t n) const;

  KvCacheOptions options_;
  std::vector<Layer> layers_;
  std::vector<int32_t> token_ids_;
  int64_t evicted_slots_ = 0;
  int64_t approximated_slots_ = 0;
  bool swapped_out_ = false;
  int64_t swapped_blocks_ = 0;
};

}  // namespace kvguard::engine
