// KeyDiff (2504.15364; kvpress KeyDiffPress): keep the keys most different
// from the mean normalised key. score = -cos(k_j, mean_j k_j/||k_j||).
#include <ATen/ATen.h>

#include "compressors/builtin/builtins.h"
#include "compressors/builtin/key_scores.h"

namespace kvguard::compress {
namespace {

class KeyDiffCompressor final : public ScoringCompressor {
 public:
  const std::string& name() const override { return name_; }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    return KeyDiffScore(ctx.cache->Keys(layer));
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
