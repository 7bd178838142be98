#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "compressors/compressor.h"

namespace kvguard::compress {

int64_t EntryBudget(const CompressContext& ctx) {
  const int64_t seen = ctx.cache->num_positions();
  // kvpress: n_kept = int(T * (1 - ratio)); the epsilon keeps 0.5 * 48 at 24, not 23.
  return static_cast<int64_t>(std::floor(seen * (1.0 - ctx.ratio) + 1e-9));
}

int64_t Compressor::Budget(const CompressContext& ctx, int64_t layer) const {
  return std::clamp<int64_t>(EntryBudget(ctx), 1, ctx.cache->RetainedSlots(layer));
}

namespace {

// A slot's rank key: protected slots first, NaN scores last.
std::vector<float> RankKeys(const float* row, int64_t total, const std::vector<int32_t>& positions,
                            const std::set<int32_t>& protected_positions) {
  std::vector<float> key(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    key[i] = std::isnan(row[i]) ? -INFINITY : row[i];
    if (!protected_positions.empty() && protected_positions.count(positions[i])) key[i] = INFINITY;
  }
  return key;
}

}  // namespace

std::vector<int64_t> RankSlots(const float* row, int64_t total,
                               const std::vector<int32_t>& positions,
                               const std::set<int32_t>& protected_positions) {
  const std::vector<float> key = RankKeys(row, total, positions, protected_positions);
  std::vector<int64_t> order(total);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return key[a] > key[b]; });
  return order;
}

// Ties go to the lower slot, as in RankSlots' stable sort.
std::vector<int64_t> TopSlots(const float* row, int64_t total,
                              const std::vector<int32_t>& positions,
                              const std::set<int32_t>& protected_positions, int64_t n_keep) {
  const std::vector<float> key = RankKeys(row, total, positions, protected_positions);
  std::vector<int64_t> order(total);
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](int64_t a, int64_t b) {
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  };
  std::nth_element(order.begin(), order.begin() + n_keep, order.end(), before);
  order.resize(n_keep);
  std::sort(order.begin(), order.end());
  return order;
}

int64_t MostProtected(const std::vector<std::vector<int32_t>>& positions,
                      const std::set<int32_t>& protected_positions) {
  int64_t most = 0;
  for (const auto& head : positions) {
    int64_t count = 0;
    for (int32_t p : head) count += protected_positions.count(p);
    most = std::max(most, count);
  }
  return most;
}

LayerPlan TopKPlan(const at::Tensor& scores, int64_t n_keep,
                   const std::vector<std::vector<int32_t>>& positions,
                   const std::set<int32_t>& protected_positions) {
  at::Tensor s = scores.to(at::kCPU, at::kFloat).contiguous();
  const int64_t heads = s.size(0), total = s.size(1);
  LayerPlan plan;
  if (n_keep >= total) return plan;
  // Protected slots are forced in; the kept count grows only if they alone exceed the budget.
  n_keep = std::max(n_keep, MostProtected(positions, protected_positions));
  if (n_keep >= total) return plan;
  plan.keep_all = false;
  plan.keep.resize(heads);
  const float* data = s.data_ptr<float>();
  for (int64_t h = 0; h < heads; ++h) {
    plan.keep[h] = TopSlots(data + h * total, total, positions[h], protected_positions, n_keep);
  }
  return plan;
}

absl::StatusOr<LayerPlan> ScoringCompressor::Plan(const CompressContext& ctx, int64_t layer) {
  const int64_t total = ctx.cache->RetainedSlots(layer);
  const int64_t n_keep = Budget(ctx, layer);
  if (n_keep >= total) return LayerPlan{};
  auto scores = Score(ctx, layer, n_keep);
  if (!scores.ok()) return scores.status();
  if (scores->dim() != 2 || scores->size(0) != ctx.config->num_kv_heads ||
      scores->size(1) != total) {
    return absl::InternalError(
        absl::StrCat("compressor '", name(), "' returned scores of the wrong shape"));
  }
  return TopKPlan(*scores, n_keep, ctx.cache->Positions(layer), ctx.protected_positions);
}

}  // namespace kvguard::compress
