#include "compressors/cache_compression.h"

#include <cmath>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "compressors/registry.h"

namespace kvguard::compress {

namespace {

// The original positions of plan.keep, after checking the whole plan (slots
// in range, counts equal per head, keep and approximate disjoint, no repeats)
// so a bad plan is refused before the cache changes.
absl::StatusOr<std::vector<std::vector<int32_t>>> KeptPositions(
    const std::vector<std::vector<int32_t>>& positions, const LayerPlan& plan) {
  const size_t heads = positions.size();
  if (plan.keep.size() != heads || plan.approximate.size() != heads) {
    return absl::InvalidArgumentError("plan: keep and approximate need one slot list per kv head");
  }
  std::vector<std::vector<int32_t>> kept(heads);
  for (size_t h = 0; h < heads; ++h) {
    if (plan.keep[h].size() != plan.keep[0].size() ||
        plan.approximate[h].size() != plan.approximate[0].size()) {
      return absl::InvalidArgumentError("plan: heads differ in kept or approximated counts");
    }
    std::vector<bool> used(positions[h].size(), false);
    for (const auto* list : {&plan.approximate[h], &plan.keep[h]}) {
      for (int64_t s : *list) {
        if (s < 0 || s >= static_cast<int64_t>(used.size())) {
          return absl::InvalidArgumentError(absl::StrCat("plan: slot ", s, " out of range"));
        }
        if (used[s])
          return absl::InvalidArgumentError(absl::StrCat("plan: slot ", s, " routed twice"));
        used[s] = true;
      }
    }
    for (int64_t s : plan.keep[h]) kept[h].push_back(positions[h][s]);
  }
  return kept;
}

// Slot indices (per head) of `wanted` original positions in `positions`.
absl::StatusOr<std::vector<std::vector<int64_t>>> SlotsOf(
    const std::vector<std::vector<int32_t>>& positions,
    const std::vector<std::vector<int32_t>>& wanted) {
  std::vector<std::vector<int64_t>> slots(positions.size());
  for (size_t h = 0; h < positions.size(); ++h) {
    std::unordered_map<int32_t, int64_t> slot_of;
    for (size_t s = 0; s < positions[h].size(); ++s)
      slot_of[positions[h][s]] = static_cast<int64_t>(s);
    for (int32_t p : wanted[h]) {
      auto it = slot_of.find(p);
      if (it == slot_of.end())
        return absl::InternalError(absl::StrCat("kept position ", p, " vanished"));
      slots[h].push_back(it->second);
    }
  }
  return slots;
}

}  // namespace

absl::Status ValidateRatio(double ratio) {
  if (!(ratio >= 0.0 && ratio < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("compression ratio must be in [0, 1), got ", ratio));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ProjectedRetained(const CompressionSpec& spec, double ratio,
                                          int64_t total) {
  if (spec.compressor.empty() || ratio <= 0) return total;
  if (auto s = ValidateRatio(ratio); !s.ok()) return s;
  auto compressor = Registry::Global().Create(spec.compressor, spec.options);
  if (!compressor.ok()) return compressor.status();
  const engine::AttentionNeeds needs = (*compressor)->Needs();
  const int64_t budget = static_cast<int64_t>(std::floor(total * (1.0 - ratio) + 1e-9));
  // The newest token is appended before each compression runs.
  const int64_t slack = 1 + std::max<int64_t>(0, spec.compress_every);
  return std::min(total, std::max(budget, needs.query_window) + slack);
}

absl::StatusOr<std::unique_ptr<CacheCompression>> CacheCompression::Create(
    const CompressionSpec& spec) {
  if (auto s = ValidateRatio(spec.ratio); !s.ok()) return s;
  if (spec.compress_every < 0) return absl::InvalidArgumentError("compress_every must be >= 0");
  auto compressor = Registry::Global().Create(spec.compressor, spec.options);
  if (!compressor.ok()) return compressor.status();
  return std::unique_ptr<CacheCompression>(new CacheCompression(std::move(*compressor), spec));
}

absl::Status CacheCompression::set_ratio(double ratio) {
  if (auto s = ValidateRatio(ratio); !s.ok()) return s;
  ratio_ = ratio;
  return absl::OkStatus();
}

absl::Status CacheCompression::AfterForward(engine::SequenceKvCache& cache,
                                            const engine::ModelConfig& config, const RopeFn& rope,
                                            bool prefill,
                                            const std::set<int32_t>& protected_positions,
                                            bool strict) {
  if (!prefill) ++decode_steps_;
  if (ratio_ <= 0.0) return absl::OkStatus();  // ratio 0: the cache is never touched
  if (!prefill && every_ > 0 && decode_steps_ % every_ != 0) return absl::OkStatus();
  CompressContext ctx{.config = &config,
                      .cache = &cache,
                      .ratio = ratio_,
                      .protected_positions = protected_positions,
                      .prefill = prefill,
                      .rope = rope};
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    if (cache.RetainedSlots(layer) <= compressor_->Budget(ctx, layer)) continue;
    auto plan = compressor_->Plan(ctx, layer);
    if (!strict && plan.status().code() == absl::StatusCode::kFailedPrecondition) {
      ++stats_.deferred;
      continue;
    }
    if (!plan.ok()) return plan.status();
    ++stats_.runs;
    if (plan->keep_all) continue;
    if (auto s = Apply(cache, layer, *plan); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CacheCompression::Apply(engine::SequenceKvCache& cache, int64_t layer,
                                     const LayerPlan& plan) {
  const int64_t heads = cache.options().num_kv_heads;
  const int64_t before = cache.RetainedSlots(layer);
  const int64_t approximated =
      plan.approximate.empty() ? 0 : static_cast<int64_t>(plan.approximate[0].size());
  std::vector<std::vector<int64_t>> keep = plan.keep;
  if (approximated > 0) {
    // Approximate() re-indexes the remaining slots, so carry `keep` over by position.
    auto kept = KeptPositions(cache.Positions(layer), plan);
    if (!kept.ok()) return kept.status();
    if (auto s = cache.Approximate(layer, plan.approximate, plan.regression); !s.ok()) return s;
    auto remapped = SlotsOf(cache.Positions(layer), *kept);
    if (!remapped.ok()) return remapped.status();
    keep = std::move(*remapped);
  }
  if (auto s = cache.Retain(layer, keep); !s.ok()) return s;
  stats_.approximated_slots += approximated * heads;
  stats_.evicted_slots += (before - approximated - cache.RetainedSlots(layer)) * heads;
  return absl::OkStatus();
}

}  // namespace kvguard::compress
