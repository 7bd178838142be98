// KIVI storage: packed bytes, reconstruction bounds, mixed precision, and
// generation through the quantized cache.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "services/engine/engine.h"
#include "services/engine/kv_cache.h"
#include "services/engine/kv_quant.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::compress {
namespace {

using engine::KvCacheOptions;
using engine::PackedBytes;
using engine::QuantSpec;
using engine::SequenceKvCache;

KvCacheOptions Quantized(int bits, std::vector<int64_t> fp_layers = {}) {
  return {.num_layers = 2, .num_kv_heads = 2, .head_dim = 16, .num_heads = 2,
          .quantize = true, .kivi = {.spec = {.bits = bits, .group_size = 32}, .residual = 32},
          .full_precision_layers = std::move(fp_layers)};
}

TEST(KiviCacheTest, BytesMatchPackedLayoutAndResidual) {
  SequenceKvCache cache(Quantized(2, {1}));
  at::manual_seed(0);
  at::Tensor k = at::randn({2, 100, 16}), v = at::randn({2, 100, 16});
  for (int64_t l = 0; l < 2; ++l) cache.Append(l, k, v, 0);
  const QuantSpec spec{.bits = 2, .group_size = 32};
  // Keys: 3 full blocks of R=32 quantized, 4 in full precision; values: a
  // window of the 32 most recent in full precision, 68 quantized.
  const int64_t expected = PackedBytes(2, 96, 16, spec, true) + PackedBytes(2, 68, 16, spec, false) +
                           (4 + 32) * 2 * 16 * 4;
  EXPECT_EQ(cache.LayerBytes(0), expected);
  EXPECT_EQ(cache.LayerBytes(1), 2 * 100 * 2 * 16 * 4);  // mixed precision: layer 1 kept in full
  EXPECT_TRUE(cache.quantized(0));
  EXPECT_FALSE(cache.quantized(1));
  EXPECT_LT(cache.LayerBytes(0) * 3, cache.LayerBytes(1));
}

TEST(KiviCacheTest, ReconstructionWithinBitWidthBound) {
  for (int bits : {2, 4}) {
    SequenceKvCache cache(Quantized(bits));
    at::manual_seed(1);
    at::Tensor k = at::randn({2, 48, 16}), v = at::randn({2, 48, 16});
    cache.Append(0, k, v, 0);
    // R = 32: keys are packed a whole block at a time (32 packed, 16 exact);
    // values keep the 32 most recent exact (16 packed).
    at::Tensor kk = cache.Keys(0), vv = cache.Values(0);
    EXPECT_TRUE(at::equal(kk.narrow(1, 32, 16), k.narrow(1, 32, 16)));
    EXPECT_TRUE(at::equal(vv.narrow(1, 16, 32), v.narrow(1, 16, 32)));
    EXPECT_FALSE(at::equal(kk.narrow(1, 0, 32), k.narrow(1, 0, 32)));
    // Per-channel key groups span 32 tokens: error <= half a step of that group's range.
    at::Tensor kg = k.narrow(1, 0, 32);
    at::Tensor step = (kg.amax(1, true) - kg.amin(1, true)) / ((1 << bits) - 1);
    EXPECT_TRUE(((kk.narrow(1, 0, 32) - kg).abs() <= step / 2 + 2e-3 * kg.abs().amax(1, true) + 1e-3).all().item<bool>())
        << bits;
    at::Tensor vg = v.narrow(1, 0, 16);
    at::Tensor vstep = (vg.amax(2, true) - vg.amin(2, true)) / ((1 << bits) - 1);
    EXPECT_TRUE(((vv.narrow(1, 0, 16) - vg).abs() <= vstep / 2 + 2e-3 * vg.abs().amax(2, true) + 1e-3).all().item<bool>())
        << bits;
  }
}

TEST(KiviGenerationTest, QuantizedCacheGeneratesWithFewerBytes) {
  auto eng = engine::Engine::Load(testing::ModelsPath("stories260K/stories260K.bin"), {});
  ASSERT_TRUE(eng.ok());
  engine::GenerateRequest req;
  req.prompt_ids = {1};
  req.max_new_tokens = 160;
  req.ignore_eos = true;
  auto plain = (*eng)->Generate(req);
  req.compression = {.compressor = "kivi",
                     .options = {"bits=4", "group_size=16", "residual_length=32",
                                 "full_precision_layers=none"}};
  auto q4 = (*eng)->Generate(req);
  ASSERT_TRUE(q4.ok()) << q4.status();
  EXPECT_LT(q4->kv_bytes * 2, plain->kv_bytes);
  // 4-bit KIVI leaves the opening of the story intact.
  EXPECT_TRUE(std::equal(plain->output_ids.begin(), plain->output_ids.begin() + 20, q4->output_ids.begin()));
  req.compression.options = {"bits=2", "group_size=16", "residual_length=32", "full_precision_layers=none"};
  auto q2 = (*eng)->Generate(req);
  ASSERT_TRUE(q2.ok()) << q2.status();
  EXPECT_LT(q2->kv_bytes, q4->kv_bytes);
  // Bad settings are refused with the option named.
  req.compression.options = {"residual_length=20"};
  EXPECT_NE((*eng)->Generate(req).status().message().find("residual_length"), std::string::npos);
}

}  // namespace
}  // namespace kvguard::compress
