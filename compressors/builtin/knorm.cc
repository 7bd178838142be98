// Knorm (Devoto et al., 2406.11430; kvpress KnormPress): keep the keys with the
// smallest L2 norm. score = -||k_j||, per kv head, on post-RoPE keys.
#include <ATen/ATen.h>

#include "compressors/builtin/builtins.h"
#include "compressors/builtin/key_scores.h"

namespace kvguard::compress {
namespace {

class KnormCompressor final : public ScoringCompressor {
 public:
  const std::string& name() const override { return name_; }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    return KnormScore(ctx.cache->Keys(layer));
  }

 private:
  std::string name_ = "knorm";
};

}  // namespace

CompressorInfo KnormInfo() {
  return {.name = "knorm",
          .description = "Knorm: keep low-norm keys (kvpress KnormPress, arXiv 2406.11430)",
          .options = {},
          .factory = [](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            return std::make_unique<KnormCompressor>();
          }};
}

}  // namespace kvguard::compress
