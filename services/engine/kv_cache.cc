#include "services/engine/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvguard::engine {

void AttentionNeeds::Merge(const AttentionNeeds& o) {
  query_window = std::max(query_window, o.query_window);
  attention_sums = attention_sums || o.attention_sums;
  if (o.query_moments) {
    query_moments_skip = query_moments ? std::min(query_moments_skip, o.query_moments_skip)
                                       : o.query_moments_skip;
    query_moments = true;
  }
  if (o.question_begin >= 0) {
    question_begin = o.question_begin;
    question_end = o.question_end;
  }
}

bool AttentionNeeds::any() const {
  return query_window > 0 || attention_sums || query_moments || question_begin >= 0;
}

SequenceKvCache::SequenceKvCache(const KvCacheOptions& options) : options_(options) {
  layers_.resize(options.num_layers);
  for (Layer& layer : layers_) {
    layer.positions.resize(options.num_kv_heads);
    if (options.reserve_slots > 0) Grow(layer, options.reserve_slots);
  }
}

void SequenceKvCache::AppendTokenIds(const std::vector<int32_t>& ids) {
  token_ids_.insert(token_ids_.end(), ids.begin(), ids.end());
}

void SequenceKvCache::Grow(Layer& layer, int64_t needed) {
  const int64_t capacity = layer.keys.defined() ? layer.keys.size(1) : 0;
  if (needed <= capacity) return;
  const int64_t new_capacity = std::max({needed, 2 * capacity, int64_t{16}});
  auto opts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  at::Tensor keys = at::empty({options_.num_kv_heads, new_capacity, options_.head_dim}, opts);
  at::Tensor values = at::empty_like(keys);
  if (layer.size > 0) {
    keys.narrow(1, 0, layer.size).copy_(layer.keys.narrow(1, 0, layer.size));
    values.narrow(1, 0, layer.size).copy_(layer.values.narrow(1, 0, layer.size));
  }
  layer.keys = std::move(keys);
  layer.values = std::move(values);
  if (options_.needs.attention_sums) {
    const int64_t group = options_.num_heads / options_.num_kv_heads;
    auto f32 = at::TensorOptions().dtype(at::kFloat).device(options_.device);
    at::Tensor sum = at::zeros({options_.num_kv_heads, group, new_capacity}, f32);
    at::Tensor count = at::zeros({options_.num_kv_heads, new_capacity}, f32);
    if (layer.size > 0) {
      sum.narrow(2, 0, layer.size).copy_(layer.stats.attention_sum.narrow(2, 0, layer.size));
      count.narrow(1, 0, layer.size).copy_(layer.stats.attention_count.narrow(1, 0, layer.size));
    }
    layer.stats.attention_sum = std::move(sum);
    layer.stats.attention_count = std::move(count);
  }
}

at::Tensor SequenceKvCache::AttentionSum(int64_t layer) const {
  const Layer& l = layers_[layer];
  if (!l.stats.attention_sum.defined()) return {};
  return l.stats.attention_sum.narrow(2, 0, l.size);
}

at::Tensor SequenceKvCache::AttentionCount(int64_t layer) const {
  const Layer& l = layers_[layer];
  if (!l.stats.attention_count.defined()) return {};
  return l.stats.attention_count.narrow(1, 0, l.size);
}

void SequenceKvCache::Append(int64_t layer_index, const at::Tensor& k, const at::Tensor& v,
                             int64_t first_position) {
  Layer& layer = layers_[layer_index];
  const int64_t n = k.size(1);
  Grow(layer, layer.size + n);
  layer.keys.narrow(1, layer.size, n).copy_(k);
  layer.values.narrow(1, layer.size, n).copy_(v);
  layer.size += n;
  for (auto& head_positions : layer.positions) {
    for (int64_t i = 0; i < n; ++i) head_positions.push_back(static_cast<int32_t>(first_position + i));
  }
}

at::Tensor SequenceKvCache::Keys(int64_t layer) const {
  const Layer& l = layers_[layer];
  if (l.size == 0) {
    return at::empty({options_.num_kv_heads, 0, options_.head_dim},
                     at::TensorOptions().dtype(options_.dtype).device(options_.device));
  }
  return l.keys.narrow(1, 0, l.size);
}

at::Tensor SequenceKvCache::Values(int64_t layer) const {
  const Layer& l = layers_[layer];
  if (l.size == 0) return Keys(layer);
  return l.values.narrow(1, 0, l.size);
}

absl::Status SequenceKvCache::Retain(int64_t layer_index,
                                     const std::vector<std::vector<int64_t>>& keep) {
  Layer& layer = layers_[layer_index];
  const int64_t heads = options_.num_kv_heads;
  if (static_cast<int64_t>(keep.size()) != heads) {
    return absl::InvalidArgumentError(absl::StrCat("retain plan has ", keep.size(),
                                                   " heads, cache has ", heads));
  }
  const int64_t n_keep = static_cast<int64_t>(keep[0].size());
  // Sort each head's kept slots by original position so slot order stays
  // chronological (compressors and RECOVERY rely on it).
  std::vector<int64_t> flat;
  flat.reserve(heads * n_keep);
  std::vector<std::vector<int32_t>> new_positions(heads);
  for (int64_t h = 0; h < heads; ++h) {
    if (static_cast<int64_t>(keep[h].size()) != n_keep) {
      return absl::InvalidArgumentError("retain plan keeps different counts in different heads");
    }
    std::vector<int64_t> slots = keep[h];
    std::sort(slots.begin(), slots.end(), [&](int64_t a, int64_t b) {
      return layer.positions[h][a] < layer.positions[h][b];
    });
    for (size_t i = 0; i < slots.size(); ++i) {
      if (slots[i] < 0 || slots[i] >= layer.size || (i > 0 && slots[i] == slots[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat("retain plan: bad or repeated slot ",
                                                       slots[i], " in head ", h));
      }
      flat.push_back(slots[i]);
      new_positions[h].push_back(layer.positions[h][slots[i]]);
    }
  }
  if (n_keep == layer.size) {
    bool identity = true;
    for (int64_t i = 0; i < heads * n_keep && identity; ++i) identity = flat[i] == i % n_keep;
    if (identity) return absl::OkStatus();
  }
  at::Tensor index = at::tensor(flat, at::kLong).view({heads, n_keep, 1}).to(options_.device);
  const at::Tensor gather_index = index.expand({heads, n_keep, options_.head_dim});
  // gather() allocates new, tight tensors; the old storage is released here.
  at::Tensor keys = at::gather(Keys(layer_index), 1, gather_index);
  at::Tensor values = at::gather(Values(layer_index), 1, gather_index);
  if (layer.stats.attention_sum.defined()) {
    const int64_t group = layer.stats.attention_sum.size(1);
    at::Tensor sum_index = index.view({heads, 1, n_keep}).expand({heads, group, n_keep});
    layer.stats.attention_sum = at::gather(AttentionSum(layer_index), 2, sum_index);
    layer.stats.attention_count = at::gather(AttentionCount(layer_index), 1, index.view({heads, n_keep}));
  }
  evicted_slots_ += heads * (layer.size - n_keep);
  layer.keys = std::move(keys);
  layer.values = std::move(values);
  layer.size = n_keep;
  layer.positions = std::move(new_positions);
  return absl::OkStatus();
}

int64_t SequenceKvCache::LayerBytes(int64_t layer) const {
  const int64_t elem = static_cast<int64_t>(c10::elementSize(options_.dtype));
  return 2 * layers_[layer].size * options_.num_kv_heads * options_.head_dim * elem;
}

KvCacheStats SequenceKvCache::Stats() const {
  KvCacheStats s;
  s.total_tokens = num_positions();
  s.evicted_slots = evicted_slots_;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(options_.dtype));
  for (int64_t l = 0; l < options_.num_layers; ++l) {
    const Layer& layer = layers_[l];
    const int64_t capacity = layer.keys.defined() ? layer.keys.size(1) : 0;
    s.retained_slots += layer.size * options_.num_kv_heads;
    s.capacity_slots += capacity * options_.num_kv_heads;
    s.bytes += LayerBytes(l);
    s.allocated_bytes += 2 * capacity * options_.num_kv_heads * options_.head_dim * elem;
  }
  return s;
}

}  // namespace kvguard::engine
