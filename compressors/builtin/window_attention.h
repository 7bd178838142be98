// File: compressors/builtin/window_attention.h
//
// Attention of a few recorded queries over a layer's retained keys, as the
// window-based scorers (SnapKV, PyramidKV, TOVA, Q2C) need it. A query sees
// the keys whose original position is not after its own (causal), so the
// same code serves prefill and decode-time compression.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressors/compressor.h"
#include "compressors/options.h"

namespace kvguard::compress {

// queries [heads, w, hd] at `query_positions`; keys [kv_heads, T, hd] with
// `key_positions` [kv_heads][T]. Returns float32 softmax weights
// [kv_heads, group, w, T] (softmax over T, masked keys get 0).
at::Tensor WindowAttention(const at::Tensor& queries, const std::vector<int32_t>& query_positions,
                           const at::Tensor& keys,
                           const std::vector<std::vector<int32_t>>& key_positions);

// Number of trailing slots (in head 0) whose position is >= `first_position`.
int64_t TrailingSlotsFrom(const std::vector<std::vector<int32_t>>& key_positions,
                          int32_t first_position);

// kvpress SnapKV score: mean attention of the window over the non-window
// slots, avg-pooled (kernel, zero padding counted), mean over the GQA group;
// the trailing `window_slots` slots get max + 1. Returns [kv_heads, T].
at::Tensor SnapKvScores(const at::Tensor& attention, int64_t window_slots, int64_t kernel_size);

// The whole SnapKV scorer on a layer (shared by snapkv and pyramidkv).
absl::StatusOr<at::Tensor> ScoreSnapKv(const CompressContext& ctx, int64_t layer, int64_t window,
                                       int64_t kernel, const std::string& name);
std::vector<OptionSpec> SnapKvOptions();

}  // namespace kvguard::compress
