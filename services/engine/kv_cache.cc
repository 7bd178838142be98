#include "services/engine/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvguard::engine {

void AttentionNeeds::Merge(const AttentionNeeds& o) {
  query_window = std::max(query_window, o.query_window);
  attention_sums = attention_sums || o.attention_sums;
  if (o.query_moments) {
    query_moments_skip =
        query_moments ? std::min(query_moments_skip, o.query_moments_skip) : o.query_moments_skip;
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
  const LayerShape shape{.kv_heads = options.num_kv_heads,
                         .head_dim = options.head_dim,
                         .dtype = options.dtype,
                         .device = options.device};
  layers_.resize(options.num_layers);
  for (int64_t l = 0; l < options.num_layers; ++l) {
    Layer& layer = layers_[l];
    const auto& fp = options.full_precision_layers;
    layer.quantized = options.quantize && std::find(fp.begin(), fp.end(), l) == fp.end();
    if (options.arena != nullptr) {
      layer.store = layer.quantized
                        ? NewPoolChargedStore(NewQuantizedLayerStore(shape, options.kivi),
                                              options.arena->pool)
                        : NewPagedLayerStore(options.arena);
    } else {
      layer.store = layer.quantized ? NewQuantizedLayerStore(shape, options.kivi)
                                    : NewDenseLayerStore(shape, options.reserve_slots);
    }
    layer.positions.resize(options.num_kv_heads);
    layer.approx_positions.resize(options.num_kv_heads);
  }
}

int64_t SequenceKvCache::BlocksToAppend(int64_t n) const {
  int64_t blocks = 0;
  for (const Layer& l : layers_) blocks += l.store->BlocksToAppend(n);
  return blocks;
}

int64_t SequenceKvCache::BlocksHeld() const {
  int64_t blocks = 0;
  for (const Layer& l : layers_) blocks += l.store->BlocksHeld();
  return blocks;
}

void SequenceKvCache::SwapOut() {
  if (swapped_out_) return;
  swapped_blocks_ = BlocksHeld();
  for (Layer& l : layers_) l.store->SwapOut();
  swapped_out_ = true;
}

int64_t SequenceKvCache::BlocksToSwapIn() const { return swapped_out_ ? swapped_blocks_ : 0; }

absl::Status SequenceKvCache::SwapIn() {
  if (!swapped_out_) return absl::OkStatus();
  const auto& pool = options_.arena;
  if (pool != nullptr && pool->pool->free_blocks() < swapped_blocks_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV pool: ", swapped_blocks_, " blocks to swap in, ", pool->pool->free_blocks(), " free"));
  }
  for (Layer& l : layers_) {
    if (absl::Status s = l.store->SwapIn(); !s.ok()) {
      for (Layer& back : layers_) back.store->SwapOut();  // all or nothing
      return s;
    }
  }
  swapped_out_ = false;
  return absl::OkStatus();
}

void SequenceKvCache::AppendTokenIds(const std::vector<int32_t>& ids) {
  token_ids_.insert(token_ids_.end(), ids.begin(), ids.end());
}

void SequenceKvCache::GrowStats(Layer& layer, int64_t needed) {
  if (!options_.needs.attention_sums) return;
  LayerAttentionStats& st = layer.stats;
  const int64_t capacity = st.attention_sum.defined() ? st.attention_sum.size(2) : 0;
  if (needed <= capacity) return;
  const int64_t new_capacity = std::max({needed, 2 * capacity, int64_t{16}});
  const int64_t group = options_.num_heads / options_.num_kv_heads;
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(options_.device);
  at::Tensor sum = at::zeros({options_.num_kv_heads, group, new_capacity}, f32);
  at::Tensor count = at::zeros({options_.num_kv_heads, new_capacity}, f32);
  if (layer.size > 0) {
    sum.narrow(2, 0, layer.size).copy_(st.attention_sum.narrow(2, 0, layer.size));
    count.narrow(1, 0, layer.size).copy_(st.attention_count.narrow(1, 0, layer.size));
  }
  st.attention_sum = std::move(sum);
  st.attention_count = std::move(count);
}

void SequenceKvCache::Append(int64_t layer_index, const at::Tensor& k, const at::Tensor& v,
                             int64_t first_position) {
  Layer& layer = layers_[layer_index];
  const int64_t n = k.size(1);
  GrowStats(layer, layer.size + n);
  layer.store->Append(k, v);
  layer.size += n;
  for (auto& head_positions : layer.positions) {
    for (int64_t i = 0; i < n; ++i)
      head_positions.push_back(static_cast<int32_t>(first_position + i));
  }
}

std::vector<int32_t> SequenceKvCache::WholePositions() const {
  // Count the (layer, head) pairs holding each position: one pass over the
  // slots, since this runs after every compression of a guarded sequence.
  std::vector<int32_t> holders(static_cast<size_t>(num_positions()), 0);
  for (const Layer& l : layers_) {
    for (const auto& head : l.positions) {
      for (int32_t p : head) ++holders[p];
    }
    for (const auto& head : l.approx_positions) {
      for (int32_t p : head) ++holders[p];
    }
  }
  const int32_t all = static_cast<int32_t>(options_.num_layers * options_.num_kv_heads);
  std::vector<int32_t> out;
  out.reserve(holders.size());
  for (int32_t p = 0; p < num_positions(); ++p) {
    if (holders[p] == all) out.push_back(p);
  }
  return out;
}

at::Tensor SequenceKvCache::Keys(int64_t layer) const { return layers_[layer].store->Keys(); }
at::Tensor SequenceKvCache::Values(int64_t layer) const { return layers_[layer].store->Values(); }

at::Tensor SequenceKvCache::AttentionKeys(int64_t layer) const {
  const Layer& l = layers_[layer];
  if (!l.approx_keys.defined()) return Keys(layer);
  return at::cat({l.approx_keys, Keys(layer)}, 1);
}

at::Tensor SequenceKvCache::AttentionValues(int64_t layer) const {
  const Layer& l = layers_[layer];
  if (!l.approx_keys.defined()) return Values(layer);
  // v_hat = k @ W + b per kv head, W and b stacked as [head_dim + 1, head_dim].
  const int64_t d = options_.head_dim;
  at::Tensor w = l.regression.narrow(1, 0, d), b = l.regression.narrow(1, d, 1);
  at::Tensor predicted = at::baddbmm(b, l.approx_keys, w).to(options_.dtype);
  return at::cat({predicted, Values(layer)}, 1);
}

bool SequenceKvCache::AttentionSpans(int64_t layer, std::vector<KvSpan>& out) const {
  const Layer& l = layers_[layer];
  if (l.approx_keys.defined()) return false;  // predicted values exist only as a tensor
  return l.store->Spans(out);
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

at::Tensor SequenceKvCache::IndexTensor(const std::vector<int64_t>& flat, int64_t heads,
                                        int64_t n) const {
  return at::tensor(flat, at::kLong).view({heads, n}).to(options_.device);
}

namespace {

// Checks a per-head slot plan (equal counts, in range, no repeats) and returns
// it flattened, each head's slots sorted by original position.
absl::StatusOr<std::vector<int64_t>> FlattenPlan(const std::vector<std::vector<int64_t>>& plan,
                                                 const std::vector<std::vector<int32_t>>& positions,
                                                 int64_t size) {
  const int64_t heads = static_cast<int64_t>(positions.size());
  if (static_cast<int64_t>(plan.size()) != heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan has ", plan.size(), " heads, cache has ", heads));
  }
  std::vector<int64_t> flat;
  for (int64_t h = 0; h < heads; ++h) {
    if (plan[h].size() != plan[0].size()) {
      return absl::InvalidArgumentError("plan keeps different counts in different heads");
    }
    std::vector<int64_t> slots = plan[h];
    for (int64_t s : slots) {
      if (s < 0 || s >= size)
        return absl::InvalidArgumentError(absl::StrCat("plan: slot ", s, " out of range"));
    }
    std::sort(slots.begin(), slots.end(),
              [&](int64_t a, int64_t b) { return positions[h][a] < positions[h][b]; });
    if (std::adjacent_find(slots.begin(), slots.end()) != slots.end()) {
      return absl::InvalidArgumentError(absl::StrCat("plan: repeated slot in head ", h));
    }
    flat.insert(flat.end(), slots.begin(), slots.end());
  }
  return flat;
}

// Moves each head's kept slots (flat[h * n_keep + i]) to the front of its
// attention-sum and count rows, in place, and zeroes the rest up to `size`:
// the rows keep their capacity, so the next Append does not grow them again.
// A gather into new tensors, then a regrow, was ~40 small libtorch ops per
// eviction of a guarded sequence: ~10% of the capacity bench's decode time.
void CompactStatsOnCpu(LayerAttentionStats& st, const std::vector<int64_t>& flat, int64_t n_keep,
                       int64_t size) {
  at::Tensor& sum = st.attention_sum;  // [kv_heads, group, capacity], contiguous
  at::Tensor& count = st.attention_count;
  KVG_CHECK(sum.is_contiguous() && count.is_contiguous() && sum.scalar_type() == at::kFloat);
  const int64_t heads = sum.size(0), group = sum.size(1), capacity = sum.size(2);
  std::vector<float> kept(static_cast<size_t>(n_keep));
  auto compact = [&](float* row, const int64_t* slots) {
    for (int64_t i = 0; i < n_keep; ++i) kept[i] = row[slots[i]];
    std::copy(kept.begin(), kept.end(), row);
    std::fill(row + n_keep, row + size, 0.0f);
  };
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t* slots = flat.data() + h * n_keep;
    for (int64_t r = 0; r < group; ++r)
      compact(sum.data_ptr<float>() + (h * group + r) * capacity, slots);
    compact(count.data_ptr<float>() + h * capacity, slots);
  }
}

}  // namespace

absl::Status SequenceKvCache::Retain(int64_t layer_index,
                                     const std::vector<std::vector<int64_t>>& keep) {
  Layer& layer = layers_[layer_index];
  auto flat = FlattenPlan(keep, layer.positions, layer.size);
  if (!flat.ok()) return flat.status();
  const int64_t heads = options_.num_kv_heads;
  const int64_t n_keep = static_cast<int64_t>(keep[0].size());
  bool identity = n_keep == layer.size;
  for (int64_t i = 0; i < heads * n_keep && identity; ++i) identity = (*flat)[i] == i % n_keep;
  if (identity) return absl::OkStatus();
  std::vector<std::vector<int32_t>> new_positions(heads);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < n_keep; ++i)
      new_positions[h].push_back(layer.positions[h][(*flat)[h * n_keep + i]]);
  }
  at::Tensor index = IndexTensor(*flat, heads, n_keep);
  layer.store->Gather(index);
  LayerAttentionStats& st = layer.stats;
  if (st.attention_sum.defined() && st.attention_sum.device().is_cpu()) {
    CompactStatsOnCpu(st, *flat, n_keep, layer.size);
  } else if (st.attention_sum.defined()) {
    const int64_t group = st.attention_sum.size(1);
    at::Tensor sum_index = index.view({heads, 1, n_keep}).expand({heads, group, n_keep});
    st.attention_sum = at::gather(AttentionSum(layer_index), 2, sum_index);
    st.attention_count = at::gather(AttentionCount(layer_index), 1, index);
  }
  evicted_slots_ += heads * (layer.size - n_keep);
  layer.size = n_keep;
  layer.positions = std::move(new_positions);
  return absl::OkStatus();
}

absl::Status SequenceKvCache::Approximate(int64_t layer_index,
                                          const std::vector<std::vector<int64_t>>& approx,
                                          const at::Tensor& regression) {
  Layer& layer = layers_[layer_index];
  const int64_t heads = options_.num_kv_heads, d = options_.head_dim;
  if (!regression.defined() || regression.sizes() != at::IntArrayRef({heads, d + 1, d})) {
    return absl::InvalidArgumentError(
        "approximation needs a [kv_heads, head_dim + 1, head_dim] regression");
  }
  auto flat = FlattenPlan(approx, layer.positions, layer.size);
  if (!flat.ok()) return flat.status();
  const int64_t n = static_cast<int64_t>(approx[0].size());
  if (n == 0) return absl::OkStatus();
  // The complement stays retained.
  std::vector<std::vector<int64_t>> keep(heads);
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<bool> moved(layer.size, false);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t slot = (*flat)[h * n + i];
      moved[slot] = true;
      layer.approx_positions[h].push_back(layer.positions[h][slot]);
    }
    for (int64_t s = 0; s < layer.size; ++s) {
      if (!moved[s]) keep[h].push_back(s);
    }
  }
  at::Tensor index = IndexTensor(*flat, heads, n).unsqueeze(-1).expand({heads, n, d});
  at::Tensor moved_keys = at::gather(Keys(layer_index), 1, index).to(at::kFloat);
  layer.approx_keys =
      layer.approx_keys.defined() ? at::cat({layer.approx_keys, moved_keys}, 1) : moved_keys;
  layer.regression = regression.to(options_.device, at::kFloat);
  const int64_t evicted_before = evicted_slots_;
  absl::Status s = Retain(layer_index, keep);
  evicted_slots_ = evicted_before;  // moved, not evicted
  approximated_slots_ += heads * n;
  return s;
}

int64_t SequenceKvCache::ApproximatedSlots(int64_t layer) const {
  const Layer& l = layers_[layer];
  return l.approx_keys.defined() ? l.approx_keys.size(1) : 0;
}

int64_t SequenceKvCache::LayerBytes(int64_t layer) const {
  const Layer& l = layers_[layer];
  // Approximated keys are held in float32 (the regression's precision).
  const int64_t approx =
      l.approx_keys.defined()
          ? l.approx_keys.numel() * static_cast<int64_t>(l.approx_keys.element_size())
          : 0;
  return l.store->Bytes() + approx;
}

int64_t SequenceKvCache::UncompressedBytes() const {
  return 2 * options_.num_layers * options_.num_kv_heads * options_.head_dim *
         static_cast<int64_t>(c10::elementSize(options_.dtype)) * num_positions();
}

KvCacheStats SequenceKvCache::Stats() const {
  KvCacheStats s;
  s.total_tokens = num_positions();
  s.evicted_slots = evicted_slots_;
  s.approximated_slots = approximated_slots_;
  for (int64_t l = 0; l < options_.num_layers; ++l) {
    const Layer& layer = layers_[l];
    s.retained_slots += layer.size * options_.num_kv_heads;
    s.bytes += LayerBytes(l);
    s.allocated_bytes += layer.store->AllocatedBytes() + (LayerBytes(l) - layer.store->Bytes());
  }
  s.capacity_slots = s.retained_slots;
  return s;
}

}  // namespace kvguard::engine
