#include "compressors/cache_compression.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "compressors/registry.h"

namespace kvguard::compress {

absl::Status ValidateRatio(double ratio) {
  if (!(ratio >= 0.0 && ratio < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("compression ratio must be in [0, 1), got ", ratio));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CacheCompression>> CacheCompression::Create(const CompressionSpec& spec) {
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
                                            bool prefill, const std::set<int32_t>& protected_positions,
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
    const int64_t before = cache.RetainedSlots(layer);
    if (auto s = cache.Retain(layer, plan->keep); !s.ok()) return s;
    stats_.evicted_slots += (before - cache.RetainedSlots(layer)) * config.num_kv_heads;
  }
  return absl::OkStatus();
}

}  // namespace kvguard::compress
