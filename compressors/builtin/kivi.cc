// KIVI (Liu et al., 2402.02750; jy-yuan/KIVI): asymmetric 2/4-bit
// quantization of the cache instead of eviction. Keys are quantized per
// channel (groups of group_size tokens), values per token (groups of
// group_size channels); the residual_length most recent tokens stay in full
// precision. Mixed precision keeps the listed layers (layer 0 by default)
// unquantized. The ratio does not apply: the bit width sets the saving.
#include <ATen/ATen.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "compressors/builtin/builtins.h"

namespace kvguard::compress {
namespace {

class KiviCompressor final : public Compressor {
 public:
  KiviCompressor(engine::KiviOptions kivi, std::vector<int64_t> fp_layers)
      : kivi_(kivi), fp_layers_(std::move(fp_layers)) {}
  const std::string& name() const override { return name_; }
  void ConfigureStorage(engine::KvCacheOptions& options) const override {
    options.quantize = true;
    options.kivi = kivi_;
    options.full_precision_layers = fp_layers_;
  }
  // Never evicts.
  int64_t Budget(const CompressContext& ctx, int64_t layer) const override {
    return ctx.cache->RetainedSlots(layer);
  }
  absl::StatusOr<LayerPlan> Plan(const CompressContext&, int64_t) override { return LayerPlan{}; }

 private:
  std::string name_ = "kivi";
  engine::KiviOptions kivi_;
  std::vector<int64_t> fp_layers_;
};

absl::StatusOr<std::vector<int64_t>> ParseLayers(const std::string& text) {
  std::vector<int64_t> layers;
  if (text == "none") return layers;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t l;
    if (!absl::SimpleAtoi(part, &l) || l < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "compressor 'kivi': option 'full_precision_layers' expects layer indices like 0,1 or 'none', got '",
          text, "'"));
    }
    layers.push_back(l);
  }
  return layers;
}

}  // namespace

CompressorInfo KiviInfo() {
  return {.name = "kivi",
          .description = "KIVI: 2/4-bit keys per channel, values per token, full-precision residual (arXiv 2402.02750)",
          .options = {IntOption("bits", 2, 2, 4, "bits per code: 2 or 4"),
                      IntOption("group_size", 32, 1, 4096, "tokens per key group / channels per value group"),
                      IntOption("residual_length", 128, 1, 1 << 20, "recent tokens kept in full precision (multiple of group_size)"),
                      StringOption("full_precision_layers", "0", "layers kept unquantized (mixed precision), e.g. 0 or 0,1 or none")},
          .factory = [](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Compressor>> {
            const int64_t bits = v.Int("bits"), group = v.Int("group_size"), residual = v.Int("residual_length");
            if (bits != 2 && bits != 4) return absl::InvalidArgumentError("compressor 'kivi': option 'bits' must be 2 or 4");
            if (residual % group != 0) {
              return absl::InvalidArgumentError(
                  "compressor 'kivi': option 'residual_length' must be a multiple of 'group_size'");
            }
            auto layers = ParseLayers(v.String("full_precision_layers"));
            if (!layers.ok()) return layers.status();
            engine::KiviOptions kivi{.spec = {.bits = static_cast<int>(bits), .group_size = group},
                                     .residual = residual};
            return std::make_unique<KiviCompressor>(kivi, std::move(*layers));
          }};
}

}  // namespace kvguard::compress
