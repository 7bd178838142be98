// File: services/engine/kv_layer_store.h
//
// How one layer's retained keys and values are held in memory. Two stores:
//  - DenseLayerStore: [kv_heads, capacity, head_dim] tensors in the cache
//    dtype, grown by doubling, compacted on Gather (memory really freed);
//  - QuantizedLayerStore: KIVI (arXiv 2402.02750) packed 2/4-bit keys
//    (per-channel groups of G tokens) and values (per-token groups of G
//    channels) plus a full-precision residual: keys are quantized R tokens
//    at a time, values leave a sliding window of the R most recent tokens.
//    Keys()/Values() dequantize for attention; nothing is re-quantized
//    except on Gather (eviction on a quantized layer), which re-packs.
// Both keep slots in chronological order of insertion.
//
// With a KvArena (the server's KV pool), dense layers are PagedLayerStores:
// their entries live in blocks of the shared arena tensors, so eviction
// hands whole blocks back to the pool without allocating; packed (KIVI)
// layers keep their own tensors but are charged to the pool in blocks, so
// one budget covers both. Without an arena nothing is pooled.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/engine/kv_block_pool.h"
#include "services/engine/kv_quant.h"
#include "services/engine/kv_span.h"

namespace kvguard::engine {

class LayerStore {
 public:
  virtual ~LayerStore() = default;
  // k, v: [kv_heads, n, head_dim].
  virtual void Append(const at::Tensor& k, const at::Tensor& v) = 0;
  // [kv_heads, size, head_dim] in the cache dtype (dequantized when packed).
  [[nodiscard]] virtual at::Tensor Keys() const = 0;
  [[nodiscard]] virtual at::Tensor Values() const = 0;
  [[nodiscard]] virtual int64_t size() const = 0;
  // The entries as they lie in memory, in slot order (kv_span.h), without
  // copying; false (out untouched) where they are packed and need Keys().
  // Valid until the next Append/Gather/SwapOut/SwapIn.
  virtual bool Spans(std::vector<KvSpan>& /*out*/) const { return false; }
  // Keeps slots index[h][i] (int64 [kv_heads, n]) per head, freeing the rest.
  virtual void Gather(const at::Tensor& index) = 0;
  [[nodiscard]] virtual int64_t Bytes() const = 0;           // retained entries
  [[nodiscard]] virtual int64_t AllocatedBytes() const = 0;  // incl. slack

  // --- the pool (0 and no-ops for stores outside one) ---
  // Blocks Append(n tokens) would take from the pool now.
  [[nodiscard]] virtual int64_t BlocksToAppend(int64_t /*n*/) const { return 0; }
  [[nodiscard]] virtual int64_t BlocksHeld() const { return 0; }
  // Preemption: SwapOut moves the entries out of the pool into memory the
  // store owns and frees its blocks; SwapIn takes blocks again and moves the
  // entries back (ResourceExhausted, nothing changed, when the pool is short).
  virtual void SwapOut() {}
  virtual absl::Status SwapIn() { return absl::OkStatus(); }
};

struct LayerShape {
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

struct KiviOptions {
  QuantSpec spec;          // bits 2/4, group size G
  int64_t residual = 128;  // R, a multiple of G
};

// The tensors behind a KvBlockPool, shared by every layer of every sequence:
// block b holds tokens [b * block_tokens, (b + 1) * block_tokens) of
// `keys` / `values` ([kv_heads, total_blocks * block_tokens, head_dim]).
// The memory is reserved at once but, on CPU, committed page by page as
// blocks are first written.
struct KvArena {
  std::shared_ptr<KvBlockPool> pool;
  LayerShape shape;
  at::Tensor keys, values;
};
// As many blocks as `total_bytes` holds (InvalidArgument below one block).
absl::StatusOr<std::shared_ptr<KvArena>> NewKvArena(const LayerShape& shape, int64_t total_bytes,
                                                    int64_t block_tokens);
// Bytes of keys + values of one token of one layer.
int64_t TokenBytes(const LayerShape& shape);

std::unique_ptr<LayerStore> NewDenseLayerStore(const LayerShape& shape, int64_t reserve);
std::unique_ptr<LayerStore> NewQuantizedLayerStore(const LayerShape& shape,
                                                   const KiviOptions& kivi);
std::unique_ptr<LayerStore> NewPagedLayerStore(std::shared_ptr<KvArena> arena);
// Charges `inner` (any store that keeps its own tensors) to the arena's pool
// in whole blocks of its Bytes().
std::unique_ptr<LayerStore> NewPoolChargedStore(std::unique_ptr<LayerStore> inner,
                                                std::shared_ptr<KvBlockPool> pool);

}  // namespace kvguard::engine
