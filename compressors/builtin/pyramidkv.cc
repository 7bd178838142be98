// PyramidKV (Cai et al., 2406.02069; kvpress PyramidKVPress): SnapKV scores
// with per-layer budgets decreasing linearly from the first layer to the last
// (KVCache-Factory formula, beta sets the slope); the total over layers is
// about L * T * (1 - ratio). Python's round() (half to even) is kept.
#include <ATen/ATen.h>

#include <cfenv>
#include <cmath>

#include "compressors/builtin/builtins.h"
#include "compressors/builtin/window_attention.h"

namespace kvguard::compress {
namespace {

class PyramidKvCompressor final : public ScoringCompressor {
 public:
  PyramidKvCompressor(int64_t window, int64_t kernel, double beta)
      : window_(window), kernel_(kernel), beta_(beta) {}
  const std::string& name() const override { return name_; }
  engine::AttentionNeeds Needs() const override { return {.query_window = window_}; }

  int64_t Budget(const CompressContext& ctx, int64_t layer) const override {
    const double total = static_cast<double>(ctx.cache->num_positions());
    const double w = static_cast<double>(window_);
    const int64_t layers = ctx.config->num_layers;
    const double m = w + total * (1.0 - ctx.ratio);
    double min_num = (m - w) / beta_;
    double max_num = 2 * (m - w) - min_num;
    if (max_num >= total - w) {
      max_num = total - w;
      min_num = 2 * (m - w) - max_num;
    }
    double keep;
    if (!(total >= max_num && max_num >= min_num && min_num >= w) || layers < 2) {
      keep = std::nearbyint(total * (1.0 - ctx.ratio));
    } else {
      keep = std::nearbyint(max_num - layer * (max_num - min_num) / double(layers - 1));
    }
    return std::clamp<int64_t>(static_cast<int64_t>(keep), 1, ctx.cache->RetainedSlots(layer));
  }

  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer, int64_t) override {
    return ScoreSnapKv(ctx, layer, window_, kernel_, name_);
  }

 private:
  std::string name_ = "pyramidkv";
  int64_t window_, kernel_;
  double beta_;
};

}  // namespace

CompressorInfo PyramidKvInfo() {
  auto options = SnapKvOptions();
  options.push_back(DoubleOption("beta", 20, 1e-6, 1e6, "budget slope: min budget = (M - w) / beta"));
  return {.name = "pyramidkv",
          .description = "PyramidKV: SnapKV scores, pyramid of per-layer budgets (kvpress PyramidKVPress, arXiv 2406.02069)",
          .options = options,
          .factory = [](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            if (v.Int("kernel_size") % 2 == 0) {
              return absl::InvalidArgumentError("compressor 'pyramidkv': option 'kernel_size' must be odd");
            }
            return std::make_unique<PyramidKvCompressor>(v.Int("window_size"), v.Int("kernel_size"),
                                                         v.Double("beta"));
          }};
}

}  // namespace kvguard::compress
