// File: services/engine/kv_quant.h
//
// Packed KIVI-style 2/4-bit quantization of KV-cache tensors (see
// shared/research/compressors.md §6). Asymmetric min-max per group:
//   scale = (max - min) / (2^b - 1),  q = round(clamp((x - min) / scale, 0, 2^b - 1)),
//   x' = q * scale + min,  with scale and min stored as float16.
// Keys are quantized per channel (a group is G consecutive tokens of one
// channel, because key outliers are channel-aligned); values per token (a group
// is G consecutive channels of one token).
//
// Layout (H = kv_heads, T = tokens, d = head_dim, G = group size, b = bits):
//   codes: uint8, each group packed into ceil(G*b/8) bytes, 8/b codes per byte,
//          the first code in the lowest bits. Packing per group keeps every group
//          byte-aligned, so token blocks can be concatenated and gathered without
//          re-packing.
//     keys   [H, d, (T/G) * ceil(G*b/8)]   (packed along tokens)
//     values [H, T, (d/G) * ceil(G*b/8)]   (packed along channels)
//   scale, min: float16
//     keys   [H, d, T/G]
//     values [H, T, d/G]
//
//   KVG_ASSIGN_OR_RETURN(PackedTensor k, QuantizeKeys(keys, {.bits = 2, .group_size = 32}));
//   at::Tensor approx = Dequantize(k, at::kHalf);   // [H, T, d]
//
// Streaming (KIVI §6.3): keys are quantized in whole blocks of G tokens and
// appended with Concat; values token by token, and evicted with SelectTokens.
// All functions use plain tensor ops and run on whatever device the input is on.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace kvguard::engine {

struct QuantSpec {
  int bits = 2;             // 2 or 4
  int64_t group_size = 32;  // > 0
};

struct PackedTensor {
  enum Axis { kPerChannel, kPerToken };

  at::Tensor codes;  // uint8, packed (layout above)
  at::Tensor scale;  // float16, one per group
  at::Tensor min;    // float16, one per group (the zero point)
  int bits = 2;
  int64_t group_size = 32;     // effective group size (values: at most d)
  std::vector<int64_t> shape;  // logical [kv_heads, T, d]
  Axis axis = kPerChannel;     // kPerChannel: keys, kPerToken: values

  // Exact bytes held by codes + scale + min.
  [[nodiscard]] int64_t Bytes() const;
  // Tokens represented (shape[1]); 0 for an empty PackedTensor.
  [[nodiscard]] int64_t tokens() const { return shape.size() == 3 ? shape[1] : 0; }
  // True for a default-constructed PackedTensor (nothing quantized yet).
  [[nodiscard]] bool empty() const { return !codes.defined(); }
};

// keys: floating [kv_heads, T, d]; T must be a multiple of group_size.
absl::StatusOr<PackedTensor> QuantizeKeys(const at::Tensor& keys, const QuantSpec& spec);

// values: floating [kv_heads, T, d]; group_size is capped at d, and d must be a
// multiple of the (capped) group size.
absl::StatusOr<PackedTensor> QuantizeValues(const at::Tensor& values, const QuantSpec& spec);

// Reconstructs [kv_heads, T, d] in out_dtype on the codes' device. The input
// must come from the functions in this file; an empty one gives an undefined tensor.
at::Tensor Dequantize(const PackedTensor& packed, at::ScalarType out_dtype);

// Exact bytes the layout above uses for a [kv_heads, T, d] tensor (keys: per
// channel, else per token), or -1 when Quantize* would reject the shape/spec.
int64_t PackedBytes(int64_t kv_heads, int64_t T, int64_t d, const QuantSpec& spec, bool keys);

// a followed by b along tokens. Both must share axis, bits, group size, heads,
// head_dim and device; an empty side yields the other.
absl::StatusOr<PackedTensor> Concat(const PackedTensor& a, const PackedTensor& b);

// Per-token (values) only: keeps, in head h, tokens index_per_head[h] (integer
// [kv_heads, n], values in [0, T), any order). Per-channel keys cannot be
// split below a group, so they give InvalidArgument.
absl::StatusOr<PackedTensor> SelectTokens(const PackedTensor& packed,
                                          const at::Tensor& index_per_head);

}  // namespace kvguard::engine
