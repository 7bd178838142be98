#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "compressors/compressor.h"

namespace kvguard::compress {

int64_t Compressor::Budget(const CompressContext& ctx, int64_t layer) const {
  const int64_t seen = ctx.cache->num_positions();
  const int64_t retained = ctx.cache->RetainedSlots(layer);
  // kvpress: n_kept = int(T * (1 - ratio)); the epsilon keeps 0.5 * 48 at 24, not 23.
  const int64_t budget = static_cast<int64_t>(std::floor(seen * (1.0 - ctx.ratio) + 1e-9));
  return std::clamp<int64_t>(budget, 1, retained);
}

LayerPlan TopKPlan(const at::Tensor& scores, int64_t n_keep,
                   const std::vector<std::vector<int32_t>>& positions,
                   const std::set<int32_t>& protected_positions) {
  at::Tensor s = scores.to(at::kCPU, at::kFloat).contiguous();
  const int64_t heads = s.size(0), total = s.size(1);
  LayerPlan plan;
  if (n_keep >= total) return plan;
  // Protected slots are forced in; the kept count grows only if they alone exceed the budget.
  int64_t most_protected = 0;
  for (int64_t h = 0; h < heads; ++h) {
    int64_t count = 0;
    for (int32_t p : positions[h]) count += protected_positions.count(p);
    most_protected = std::max(most_protected, count);
  }
  n_keep = std::max(n_keep, most_protected);
  if (n_keep >= total) return plan;
  plan.keep_all = false;
  plan.keep.resize(heads);
  const float* data = s.data_ptr<float>();
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<int64_t> order(total);
    std::iota(order.begin(), order.end(), 0);
    const float* row = data + h * total;
    auto key = [&](int64_t i) {
      return protected_positions.count(positions[h][i]) ? INFINITY : (std::isnan(row[i]) ? -INFINITY : row[i]);
    };
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) > key(b); });
    order.resize(n_keep);
    std::sort(order.begin(), order.end());
    plan.keep[h] = std::move(order);
  }
  return plan;
}

absl::StatusOr<LayerPlan> ScoringCompressor::Plan(const CompressContext& ctx, int64_t layer) {
  const int64_t total = ctx.cache->RetainedSlots(layer);
  const int64_t n_keep = Budget(ctx, layer);
  if (n_keep >= total) return LayerPlan{};
  auto scores = Score(ctx, layer, n_keep);
  if (!scores.ok()) return scores.status();
  if (scores->dim() != 2 || scores->size(0) != ctx.config->num_kv_heads || scores->size(1) != total) {
    return absl::InternalError(absl::StrCat("compressor '", name(), "' returned scores of the wrong shape"));
  }
  return TopKPlan(*scores, n_keep, ctx.cache->Positions(layer), ctx.protected_positions);
}

}  // namespace kvguard::compress
