// Q2C (question-to-context; ours, after the query-aware scoring of SnapKV and
// FINCH): score each context key by the softmax attention the question's
// tokens pay it, averaged over the question tokens and the GQA group. The
// question span [question_begin, question_end) comes from the request; its
// own tokens are always kept.
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "compressors/builtin/builtins.h"
#include "compressors/builtin/window_attention.h"

namespace kvguard::compress {
namespace {

class Q2cCompressor final : public ScoringCompressor {
 public:
  Q2cCompressor(int64_t begin, int64_t end) : begin_(begin), end_(end) {}
  const std::string& name() const override { return name_; }
  engine::AttentionNeeds Needs() const override {
    return {.question_begin = begin_, .question_end = end_};
  }
  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    const auto& st = ctx.cache->AttentionStats(layer);
    if (!st.question_queries.defined()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "q2c: the question span [", begin_, ", ", end_, ") was not part of the prompt"));
    }
    const auto& positions = ctx.cache->Positions(layer);
    at::Tensor attn = WindowAttention(st.question_queries, st.question_positions,
                                      ctx.cache->Keys(layer), positions);  // [hkv, g, q, T]
    at::Tensor scores = attn.mean({1, 2});                                  // [hkv, T]
    const double top = scores.max().item<double>() + 1;
    for (int64_t h = 0; h < scores.size(0); ++h) {
      for (int64_t j = 0; j < scores.size(1); ++j) {
        if (positions[h][j] >= begin_ && positions[h][j] < end_) scores[h][j] = top;
      }
    }
    return scores;
  }

 private:
  std::string name_ = "q2c";
  int64_t begin_, end_;
};

}  // namespace

CompressorInfo Q2cInfo() {
  return {.name = "q2c",
          .description = "Q2C: question-to-context attention (question span from the request; ours)",
          .options = {IntOption("question_begin", -1, -1, 1 << 30, "first position of the question"),
                      IntOption("question_end", -1, -1, 1 << 30, "one past the question's last position")},
          .factory = [](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            const int64_t b = v.Int("question_begin"), e = v.Int("question_end");
            if (b < 0 || e <= b) {
              return absl::InvalidArgumentError(
                  "compressor 'q2c' needs a question span: question_begin >= 0 and question_end > question_begin");
            }
            return std::make_unique<Q2cCompressor>(b, e);
          }};
}

}  // namespace kvguard::compress
