// TOVA (Oren et al., 2401.06104; kvpress TOVAPress): the attention of the
// most recent token, averaged over all query heads, ranks the keys; the same
// tokens go in every kv head. The most recent token is always kept (max + 1).
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "compressors/builtin/builtins.h"
#include "compressors/builtin/window_attention.h"

namespace kvguard::compress {
namespace {

class TovaCompressor final : public ScoringCompressor {
 public:
  const std::string& name() const override { return name_; }
  engine::AttentionNeeds Needs() const override { return {.query_window = 1}; }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    const auto& stats = ctx.cache->AttentionStats(layer);
    const int64_t total = ctx.cache->RetainedSlots(layer);
    if (!stats.recent_queries.defined() || total < 2) {
      return absl::FailedPreconditionError("tova: needs at least two cached tokens");
    }
    at::Tensor last = stats.recent_queries.narrow(1, stats.recent_queries.size(1) - 1, 1);
    at::Tensor attn = WindowAttention(last, {stats.recent_positions.back()}, ctx.cache->Keys(layer),
                                      ctx.cache->Positions(layer));  // [hkv, g, 1, T]
    const int64_t hkv = attn.size(0);
    at::Tensor mean = attn.narrow(3, 0, total - 1).mean({0, 1, 2});  // over all query heads
    const double top = mean.max().item<double>() + 1;
    at::Tensor scores = at::cat({mean, at::full({1}, top, mean.options())});
    return scores.unsqueeze(0).expand({hkv, total}).contiguous();
  }

 private:
  std::string name_ = "tova";
};

}  // namespace

CompressorInfo TovaInfo() {
  return {.name = "tova",
          .description = "TOVA: last-token attention over all heads (kvpress TOVAPress, arXiv 2401.06104)",
          .options = {},
          .factory = [](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            return std::make_unique<TovaCompressor>();
          }};
}

}  // namespace kvguard::compress
