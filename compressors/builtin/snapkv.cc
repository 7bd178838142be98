// SnapKV (Li et al., 2404.14469; kvpress SnapKVPress): the last window_size
// queries vote for keys: their softmax attention, averaged over the window,
// avg-pooled over neighbouring tokens (kernel_size), averaged over the GQA
// group. The window itself is always kept. During decoding the window is the
// most recent window_size tokens (the engine keeps their queries).
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "compressors/builtin/builtins.h"
#include "compressors/builtin/window_attention.h"

namespace kvguard::compress {
namespace {

class SnapKvCompressor final : public ScoringCompressor {
 public:
  SnapKvCompressor(int64_t window, int64_t kernel) : window_(window), kernel_(kernel) {}
  const std::string& name() const override { return name_; }
  engine::AttentionNeeds Needs() const override { return {.query_window = window_}; }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    return ScoreSnapKv(ctx, layer, window_, kernel_, name_);
  }

 private:
  std::string name_ = "snapkv";
  int64_t window_, kernel_;
};

}  // namespace

absl::StatusOr<at::Tensor> ScoreSnapKv(const CompressContext& ctx, int64_t layer, int64_t window,
                                       int64_t kernel, const std::string& name) {
  const auto& stats = ctx.cache->AttentionStats(layer);
  const int64_t total = ctx.cache->RetainedSlots(layer);
  if (!stats.recent_queries.defined() || stats.recent_positions.size() < size_t(window) ||
      total <= window) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, ": needs more than window_size=", window, " tokens (cache holds ", total, ")"));
  }
  const auto& positions = ctx.cache->Positions(layer);
  at::Tensor attn = WindowAttention(stats.recent_queries, stats.recent_positions,
                                    ctx.cache->Keys(layer), positions);
  const int64_t window_slots = TrailingSlotsFrom(positions, stats.recent_positions.front());
  return SnapKvScores(attn, window_slots, kernel);
}

std::vector<OptionSpec> SnapKvOptions() {
  return {IntOption("window_size", 64, 1, 1 << 20, "observation window: most recent queries that vote"),
          IntOption("kernel_size", 5, 1, 1025, "avg-pool kernel over neighbouring tokens (odd)")};
}

CompressorInfo SnapKvInfo() {
  return {.name = "snapkv",
          .description = "SnapKV: observation-window attention, pooled (kvpress SnapKVPress, arXiv 2404.14469)",
          .options = SnapKvOptions(),
          .factory = [](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            if (v.Int("kernel_size") % 2 == 0) {
              return absl::InvalidArgumentError("compressor 'snapkv': option 'kernel_size' must be odd");
            }
            return std::make_unique<SnapKvCompressor>(v.Int("window_size"), v.Int("kernel_size"));
          }};
}

}  // namespace kvguard::compress
