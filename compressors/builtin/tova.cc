// TOVA (Oren et al., 2401.06104; kvpress TOVAPress): the attention of the
// most recent token, averaged over all query heads, ranks the keys; the same
// tokens go in every kv head. The most recent token is always kept (max + 1).
#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

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
                                      ctx.cache->Positions(layer))
                          .contiguous();  // [hkv, g, 1, T]
    // Mean over all query heads, as loops: this runs on the decode thread
    // for one sequence at a time, where five small tensor ops cost more.
    const int64_t hkv = attn.size(0), heads = hkv * attn.size(1);
    at::Tensor scores = at::zeros({hkv, total}, at::kFloat);
    float* row = scores.data_ptr<float>();
    const float* a = attn.data_ptr<float>();
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < total - 1; ++j) row[j] += a[h * total + j];
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < total - 1; ++j) top = std::max(top, row[j] /= float(heads));
    row[total - 1] = top + 1;  // the newest token is always kept
    for (int64_t h = 1; h < hkv; ++h) std::copy(row, row + total, row + h * total);
    return scores;
  }

 private:
  std::string name_ = "tova";
};

}  // namespace

CompressorInfo TovaInfo() {
  return {.name = "tova",
          .description =
              "TOVA: last-token attention over all heads (kvpress TOVAPress, arXiv 2401.06104)",
          .options = {},
          .factory = [](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            return std::make_unique<TovaCompressor>();
          }};
}

}  // namespace kvguard::compress
