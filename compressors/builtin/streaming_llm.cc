// StreamingLLM (Xiao et al., 2309.17453; kvpress StreamingLLMPress): keep the
// first n_sink tokens and the most recent ones. Scores are 1 except 0 on the
// T - n_keep slots right after the sinks. Kept keys keep their original RoPE
// rotation (kvpress semantics, no re-positioning).
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "compressors/builtin/builtins.h"

namespace kvguard::compress {
namespace {

class StreamingLlmCompressor final : public ScoringCompressor {
 public:
  explicit StreamingLlmCompressor(int64_t n_sink) : n_sink_(n_sink) {}
  const std::string& name() const override { return name_; }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t n_keep) override {
    const int64_t total = ctx.cache->RetainedSlots(layer);
    if (total <= n_sink_) {
      return absl::FailedPreconditionError(
          absl::StrCat("streaming_llm: ", total, " entries do not exceed n_sink=", n_sink_));
    }
    const int64_t pruned = std::min(total - n_keep, total - n_sink_);
    at::Tensor scores = at::ones({ctx.config->num_kv_heads, total}, at::kFloat);
    scores.narrow(1, n_sink_, pruned).zero_();
    return scores;
  }

 private:
  std::string name_ = "streaming_llm";
  int64_t n_sink_;
};

}  // namespace

CompressorInfo StreamingLlmInfo() {
  return {.name = "streaming_llm",
          .description = "StreamingLLM: attention sinks + recent window (kvpress StreamingLLMPress, arXiv 2309.17453)",
          .options = {IntOption("n_sink", 4, 0, 1 << 20, "initial tokens always kept")},
          .factory = [](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            return std::make_unique<StreamingLlmCompressor>(v.Int("n_sink"));
          }};
}

}  // namespace kvguard::compress
