// KeyDiff (2504.15364; kvpress KeyDiffPress): keep the keys most different
// from the mean normalised key. score = -cos(k_j, mean_j k_j/||k_j||).
#include <ATen/ATen.h>

#include "compressors/builtin/builtins.h"

namespace kvguard::compress {
namespace {

class KeyDiffCompressor final : public ScoringCompressor {
 public:
  const std::string& name() const override { return name_; }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    at::Tensor k = ctx.cache->Keys(layer).to(at::kFloat);  // [hkv, T, hd]
    // F.normalize (eps 1e-12), then F.cosine_similarity (eps 1e-8), as kvpress.
    at::Tensor unit = k / k.norm(2, -1, true).clamp_min(1e-12);
    at::Tensor anchor = unit.mean(1, true);  // [hkv, 1, hd]
    at::Tensor dot = (k * anchor).sum(-1);
    at::Tensor denom = (k.norm(2, -1) * anchor.norm(2, -1)).clamp_min(1e-8);
    return -(dot / denom);
  }

 private:
  std::string name_ = "keydiff";
};

}  // namespace

CompressorInfo KeyDiffInfo() {
  return {.name = "keydiff",
          .description = "KeyDiff: keep keys least similar to the mean key (kvpress KeyDiffPress, arXiv 2504.15364)",
          .options = {},
          .factory = [](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            return std::make_unique<KeyDiffCompressor>();
          }};
}

}  // namespace kvguard::compress
