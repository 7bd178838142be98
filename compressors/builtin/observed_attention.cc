// ObservedAttention / H2O (Zhang et al., 2306.14048; kvpress
// ObservedAttentionPress): a key's score is the attention it received,
// averaged over the queries that could see it, then over the GQA group. The
// engine accumulates the sums during every forward (prefill and decode), so
// during decoding this is H2O's accumulated attention.
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "compressors/builtin/builtins.h"
#include "compressors/builtin/key_scores.h"

namespace kvguard::compress {
namespace {

class ObservedAttentionCompressor final : public ScoringCompressor {
 public:
  const std::string& name() const override { return name_; }
  engine::AttentionNeeds Needs() const override { return {.attention_sums = true}; }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    auto scores = ObservedAttentionScore(*ctx.cache, layer);
    if (!scores.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("observed_attention: ", scores.status().message()));
    }
    return scores;
  }

 private:
  std::string name_ = "observed_attention";
};

}  // namespace

CompressorInfo ObservedAttentionInfo() {
  return {.name = "observed_attention",
          .description = "ObservedAttention/H2O: accumulated attention per key (kvpress ObservedAttentionPress, arXiv 2306.14048)",
          .options = {},
          .factory = [](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            return std::make_unique<ObservedAttentionCompressor>();
          }};
}

}  // namespace kvguard::compress
