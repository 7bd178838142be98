// ExpectedAttention (Devoto et al., 2510.00636; kvpress ExpectedAttentionPress):
// model future queries as a Gaussian fitted to the prompt's pre-RoPE queries
// (positions >= n_sink), rotated by the average RoPE of the next
// n_future_positions positions, and score each key by its expected softmax
// attention under that Gaussian, times ||v|| (use_vnorm). Sinks always kept.
#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "compressors/builtin/builtins.h"

namespace kvguard::compress {
namespace {

struct Settings {
  int64_t n_future = 512;
  int64_t n_sink = 4;
  bool use_covariance = true;
  bool use_vnorm = true;
  double epsilon = 0.0;
};

// R = diag(cos) + diag(sin) P, P the rotate_half matrix (halves layout).
at::Tensor MeanRotation(const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t d = cos.size(1), half = d / 2;
  at::Tensor c = cos.to(at::kDouble).mean(0), s = sin.to(at::kDouble).mean(0);
  at::Tensor p = at::zeros({d, d}, at::kDouble);
  p.narrow(0, 0, half).narrow(1, half, half).copy_(-at::eye(half, at::kDouble));
  p.narrow(0, half, half).narrow(1, 0, half).copy_(at::eye(half, at::kDouble));
  return at::diag(c) + at::diag(s).matmul(p);
}

class ExpectedAttentionCompressor final : public ScoringCompressor {
 public:
  explicit ExpectedAttentionCompressor(Settings s) : s_(s) {}
  const std::string& name() const override { return name_; }
  engine::AttentionNeeds Needs() const override {
    return {.query_moments = true, .query_moments_skip = s_.n_sink};
  }

  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    const auto& st = ctx.cache->AttentionStats(layer);
    const int64_t total = ctx.cache->RetainedSlots(layer);
    if (st.query_count < 1 || total <= s_.n_sink) {
      return absl::FailedPreconditionError(absl::StrCat(
          name_, ": needs more than n_sink=", s_.n_sink, " tokens to estimate query statistics"));
    }
    const int64_t hd = ctx.config->head_dim, hkv = ctx.config->num_kv_heads;
    const int64_t group = ctx.config->num_heads / hkv;
    at::Tensor mean = st.query_sum.to(at::kCPU) / double(st.query_count);  // [h, d]
    auto [cos, sin] = ctx.rope(ctx.cache->num_positions(), s_.n_future);
    at::Tensor rot = MeanRotation(cos, sin);                  // [d, d]
    at::Tensor mu = mean.matmul(rot.t());                     // R mu, per head
    at::Tensor keys = ctx.cache->Keys(layer).to(at::kCPU, at::kDouble);  // [hkv, T, d]
    at::Tensor k = keys.narrow(1, s_.n_sink, total - s_.n_sink);
    at::Tensor kq = k.repeat_interleave(group, 0);            // [h, T', d]
    at::Tensor z = at::matmul(kq, mu.unsqueeze(-1)).squeeze(-1) / std::sqrt(double(hd));
    if (s_.use_covariance) {
      at::Tensor cov = st.query_outer_sum.to(at::kCPU) / double(st.query_count) -
                       mean.unsqueeze(-1) * mean.unsqueeze(-2);          // [h, d, d]
      at::Tensor cov_rot = rot.matmul(cov).matmul(rot.t());
      z = z + 0.5 * (at::matmul(kq, cov_rot) * kq).sum(-1) / double(hd);
    }
    at::Tensor scores = at::softmax(z.to(at::kFloat), -1).view({hkv, group, -1}).mean(1);
    if (s_.use_vnorm) {
      at::Tensor v = ctx.cache->Values(layer).to(at::kCPU, at::kFloat).narrow(1, s_.n_sink, total - s_.n_sink);
      scores = (scores + s_.epsilon) * v.norm(2, -1);
    }
    const double top = scores.max().item<double>() + 1;
    return at::cat({at::full({hkv, s_.n_sink}, top, scores.options()), scores}, 1);
  }

 private:
  std::string name_ = "expected_attention";
  Settings s_;
};

}  // namespace

CompressorInfo ExpectedAttentionInfo() {
  return {.name = "expected_attention",
          .description = "ExpectedAttention: expected future attention from query statistics (kvpress ExpectedAttentionPress, arXiv 2510.00636)",
          .options = {IntOption("n_future_positions", 512, 1, 1 << 20, "future positions whose RoPE is averaged"),
                      IntOption("n_sink", 4, 0, 1 << 20, "initial tokens always kept, excluded from statistics"),
                      BoolOption("use_covariance", true, "include the query covariance term"),
                      BoolOption("use_vnorm", true, "multiply by the value norm"),
                      DoubleOption("epsilon", 0.0, 0.0, 1e6, "added to the score before the value norm")},
          .factory = [](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            return std::make_unique<ExpectedAttentionCompressor>(
                Settings{.n_future = v.Int("n_future_positions"),
                         .n_sink = v.Int("n_sink"),
                         .use_covariance = v.Bool("use_covariance"),
                         .use_vnorm = v.Bool("use_vnorm"),
                         .epsilon = v.Double("epsilon")});
          }};
}

}  // namespace kvguard::compress
