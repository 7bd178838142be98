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
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "services/engine/kv_quant.h"

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
  // Keeps slots index[h][i] (int64 [kv_heads, n]) per head, freeing the rest.
  virtual void Gather(const at::Tensor& index) = 0;
  [[nodiscard]] virtual int64_t Bytes() const = 0;           // retained entries
  [[nodiscard]] virtual int64_t AllocatedBytes() const = 0;  // incl. slack
};

struct LayerShape {
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

struct KiviOptions {
  QuantSpec spec;            // bits 2/4, group size G
  int64_t residual = 128;    // R, a multiple of G
};

std::unique_ptr<LayerStore> NewDenseLayerStore(const LayerShape& shape, int64_t reserve);
std::unique_ptr<LayerStore> NewQuantizedLayerStore(const LayerShape& shape, const KiviOptions& kivi);

}  // namespace kvguard::engine
