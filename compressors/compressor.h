// File: compressors/compressor.h
//
// The compressor plugin API. A compressor looks at one layer of a sequence's
// KV cache (keys after RoPE, values, each slot's original position, plus the
// attention statistics it asked the engine to gather) and returns a *plan*:
// which slots each kv head keeps. It never mutates the cache: the caller
// applies the plan (SequenceKvCache::Retain), so the guard can veto or relax
// a plan, and every compressor is a pure, testable function.
//
// The ratio follows kvpress: the fraction of KV entries removed. At prefill
// a layer keeps int(T * (1 - ratio)) of its T entries; during decoding the
// budget is int(positions_seen * (1 - ratio)), so raising the ratio evicts
// more at the next compression and lowering it stops eviction until the
// cache grows back to the budget.
//
// Threads: each sequence has its own compressor instance, and the server steps
// a batch's sequences in parallel (engine::AfterForwardAll), so different
// instances run at once. An instance needs no locking; state shared between
// instances (statics, plugin globals) must be thread-safe.
//
// Most methods only rank tokens: derive from ScoringCompressor and implement
// Score() (higher = keep); the base applies the budget, the protected
// positions and top-k.
//
//   class KnormCompressor final : public ScoringCompressor {
//     absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer,
//                                      int64_t n_keep) override {
//       return -ctx.cache->Keys(layer).to(at::kFloat).norm(2, -1);  // [kv_heads, T]
//     }
//   };
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "services/engine/kv_cache.h"
#include "services/engine/model_config.h"

namespace kvguard::compress {

// RoPE cos/sin rows [count, head_dim] (float32) for positions first.. .
using RopeFn = std::function<std::pair<at::Tensor, at::Tensor>(int64_t first, int64_t count)>;

// Everything a compressor may read. Borrowed; valid for one Plan() call.
struct CompressContext {
  const engine::ModelConfig* config = nullptr;
  const engine::SequenceKvCache* cache = nullptr;
  double ratio = 0.0;                     // fraction of entries to remove, in [0, 1)
  std::set<int32_t> protected_positions;  // never evicted (guard: recent/thinking tokens, anchors)
  bool prefill = true;                    // first compression after the prompt
  RopeFn rope;                            // for methods that rotate future positions
};

// Slots each kv head keeps (indices into the layer's current slots; every
// head keeps the same number). An empty plan (`keep_all`) changes nothing.
//
// Optional third route (VECTOR): `approximate` lists, per kv head, slots whose
// value is dropped while the key stays; attention then reads the value as
// [k, 1] @ regression[h]. Same indexing as `keep` (the slots before the plan),
// equal counts per head, disjoint from `keep`; slots in neither are evicted.
// Left empty, the plan is a plain keep/evict plan.
struct LayerPlan {
  bool keep_all = true;
  std::vector<std::vector<int64_t>> keep;         // [kv_heads][n_keep]
  std::vector<std::vector<int64_t>> approximate;  // [kv_heads][n_approx], or empty
  at::Tensor regression;  // [kv_heads, head_dim + 1, head_dim] with approximate
};

class Compressor {
 public:
  virtual ~Compressor() = default;

  // Registry name, e.g. "snapkv".
  [[nodiscard]] virtual const std::string& name() const = 0;
  // Statistics the engine must gather during the forward pass (set when the
  // sequence's cache is created).
  [[nodiscard]] virtual engine::AttentionNeeds Needs() const { return {}; }
  // How the cache should store entries, for methods that quantize rather
  // than evict (KIVI): applied when the sequence's cache is created.
  virtual void ConfigureStorage(engine::KvCacheOptions& /*options*/) const {}
  // Number of entries layer `layer` should keep (the budget) given the context.
  [[nodiscard]] virtual int64_t Budget(const CompressContext& ctx, int64_t layer) const;
  // Plans layer `layer`. Must keep every protected position that is retained.
  // Errors (e.g. a prefill shorter than the method's window) leave the cache as is.
  virtual absl::StatusOr<LayerPlan> Plan(const CompressContext& ctx, int64_t layer) = 0;
};

// Base for methods that rank entries: Plan() = top-n_keep of Score() per kv
// head, with protected positions forced in. Ties go to the earlier slot.
class ScoringCompressor : public Compressor {
 public:
  absl::StatusOr<LayerPlan> Plan(const CompressContext& ctx, int64_t layer) override;
  // Scores of the layer's retained slots, [kv_heads, T] (higher = keep).
  // `n_keep` is the budget (positional methods such as StreamingLLM use it).
  virtual absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer,
                                           int64_t n_keep) = 0;
};

// Full key+value entries a layer may hold at ctx.ratio: int(seen * (1 - ratio)),
// before any clamping (Compressor::Budget clamps it to [1, retained]).
int64_t EntryBudget(const CompressContext& ctx);

// Slot indices 0..total-1 of one head ordered best first by `row` (scores of
// that head's slots): protected positions first, NaN scores last, ties to the
// earlier slot.
std::vector<int64_t> RankSlots(const float* row, int64_t total,
                               const std::vector<int32_t>& positions,
                               const std::set<int32_t>& protected_positions);

// The first n_keep slots of RankSlots' order, in ascending slot order (a
// selection, not a full sort).
std::vector<int64_t> TopSlots(const float* row, int64_t total,
                              const std::vector<int32_t>& positions,
                              const std::set<int32_t>& protected_positions, int64_t n_keep);

// Largest number of protected positions among the heads' retained slots.
int64_t MostProtected(const std::vector<std::vector<int32_t>>& positions,
                      const std::set<int32_t>& protected_positions);

// Selects the top `n_keep` slots of `scores` [kv_heads, T] per head, forcing
// slots whose position is protected. Exposed for tests and plugins.
LayerPlan TopKPlan(const at::Tensor& scores, int64_t n_keep,
                   const std::vector<std::vector<int32_t>>& positions,
                   const std::set<int32_t>& protected_positions);

}  // namespace kvguard::compress
