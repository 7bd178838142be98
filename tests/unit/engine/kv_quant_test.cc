#include "services/engine/kv_quant.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace kvguard::engine {
namespace {

at::Tensor Random(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kFloat);
}

// Keys with a few large-magnitude channels, as real keys have (the reason
// KIVI groups keys per channel).
at::Tensor RandomKeys(std::vector<int64_t> shape, uint64_t seed) {
  at::Tensor k = Random(shape, seed);
  k.select(2, 0).mul_(8.0);
  return k;
}

PackedTensor Unwrap(absl::StatusOr<PackedTensor> p) {
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : PackedTensor{};
}

// Broadcasts per-group stats back to per-element [H, T, d].
at::Tensor PerElement(const PackedTensor& p, const at::Tensor& stat) {
  at::Tensor s = stat.to(at::kFloat).repeat_interleave(p.group_size, 2);
  return p.axis == PackedTensor::kPerChannel ? s.transpose(1, 2) : s;
}

// Checks |x - x'| <= scale/2 per element, plus slack for the fp16 rounding of
// scale and min (relative 2^-11 each; the scale error is multiplied by the
// code, at most 2^b - 1).
void ExpectWithinHalfStep(const at::Tensor& x, const PackedTensor& p) {
  const at::Tensor scale = PerElement(p, p.scale);
  const at::Tensor min = PerElement(p, p.min);
  const double qmax = (1 << p.bits) - 1;
  const at::Tensor slack = (min.abs() + scale * qmax) * std::ldexp(1.0, -10) + 1e-6;
  const at::Tensor err = (Dequantize(p, at::kFloat) - x).abs();
  EXPECT_TRUE((err <= scale / 2 + slack).all().item<bool>())
      << "max excess " << (err - scale / 2 - slack).max().item<float>();
}

using Case = std::tuple<int /*bits*/, int64_t /*H*/, int64_t /*T*/, int64_t /*d*/, int64_t /*G*/>;

class KvQuantErrorTest : public ::testing::TestWithParam<Case> {};

TEST_P(KvQuantErrorTest, KeysAndValuesWithinHalfAStep) {
  const auto [bits, h, t, d, g] = GetParam();
  const QuantSpec spec{.bits = bits, .group_size = g};
  const at::Tensor keys = RandomKeys({h, t, d}, 1);
  const at::Tensor values = Random({h, t, d}, 2);
  PackedTensor k = Unwrap(QuantizeKeys(keys, spec));
  PackedTensor v = Unwrap(QuantizeValues(values, spec));
  ExpectWithinHalfStep(keys, k);
  ExpectWithinHalfStep(values, v);
  EXPECT_EQ(k.Bytes(), PackedBytes(h, t, d, spec, /*keys=*/true));
  EXPECT_EQ(v.Bytes(), PackedBytes(h, t, d, spec, /*keys=*/false));
}

INSTANTIATE_TEST_SUITE_P(Shapes, KvQuantErrorTest,
                         ::testing::Values(Case{2, 2, 64, 16, 32}, Case{4, 2, 64, 16, 32},
                                           Case{2, 4, 128, 64, 32}, Case{4, 4, 128, 64, 32},
                                           Case{2, 1, 24, 12, 3}, Case{4, 1, 24, 12, 3},
                                           Case{2, 3, 16, 8, 8}, Case{4, 8, 32, 128, 16}));

TEST(KvQuantTest, PacksFirstCodeIntoLowestBits) {
  // Values 0..3 over one group: min 0, scale 1, codes 0,1,2,3.
  const at::Tensor ramp = at::arange(4, at::kFloat);
  PackedTensor v = Unwrap(QuantizeValues(ramp.view({1, 1, 4}), {.bits = 2, .group_size = 4}));
  PackedTensor k = Unwrap(QuantizeKeys(ramp.view({1, 4, 1}), {.bits = 2, .group_size = 4}));
  const int expected = 0 | 1 << 2 | 2 << 4 | 3 << 6;
  EXPECT_EQ(v.codes.item<uint8_t>(), expected);
  EXPECT_EQ(k.codes.item<uint8_t>(), expected);
  // 4 bits: codes 0..15, byte i holds codes 2i (low nibble) and 2i+1.
  const at::Tensor ramp16 = at::arange(16, at::kFloat).view({1, 1, 16});
  PackedTensor v4 = Unwrap(QuantizeValues(ramp16, {.bits = 4, .group_size = 16}));
  ASSERT_EQ(v4.codes.numel(), 8);
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(v4.codes[0][0][i].item<uint8_t>(), 2 * i | (2 * i + 1) << 4);
  EXPECT_TRUE(at::equal(Dequantize(v4, at::kFloat), ramp16));
}

TEST(KvQuantTest, ConstantGroupsReconstructExactly) {
  // Per-key-channel constants, fp16-representable (or not: 0.1 comes back as fp16(0.1)).
  at::Tensor keys = at::empty({2, 64, 4});
  const std::vector<float> channel = {0.0f, -3.5f, 0.375f, 0.1f};
  for (int64_t c = 0; c < 4; ++c) keys.select(2, c).fill_(channel[c]);
  for (int bits : {2, 4}) {
    PackedTensor k = Unwrap(QuantizeKeys(keys, {.bits = bits, .group_size = 32}));
    EXPECT_EQ(k.codes.count_nonzero().item<int64_t>(), 0);
    EXPECT_TRUE(at::equal(Dequantize(k, at::kFloat), keys.to(at::kHalf).to(at::kFloat)));
    PackedTensor v = Unwrap(QuantizeValues(keys.transpose(1, 2), {.bits = bits, .group_size = 16}));
    EXPECT_TRUE(at::equal(Dequantize(v, at::kHalf), keys.transpose(1, 2).to(at::kHalf)));
  }
}

TEST(KvQuantTest, BytesMatchHandComputedLayout) {
  const QuantSpec spec{.bits = 2, .group_size = 32};
  PackedTensor k = Unwrap(QuantizeKeys(RandomKeys({2, 64, 16}, 3), spec));
  // Codes: 2 heads * 16 channels * 64 tokens * 2 bits / 8 = 512 bytes, packed
  // along tokens. Stats: 2 * 16 * (64 / 32) groups * (scale + min) * 2 bytes = 256.
  EXPECT_EQ(k.codes.scalar_type(), at::kByte);
  EXPECT_EQ(k.codes.sizes(), (std::vector<int64_t>{2, 16, 16}));
  EXPECT_EQ(k.scale.scalar_type(), at::kHalf);
  EXPECT_EQ(k.scale.sizes(), (std::vector<int64_t>{2, 16, 2}));
  EXPECT_EQ(k.Bytes(), 768);
  EXPECT_EQ(PackedBytes(2, 64, 16, spec, /*keys=*/true), 768);

  // Values: G=32 > d=16 is capped to 16, one group per token. Codes 2*64*16*2/8
  // = 512, stats 2 * 64 * 1 * 2 * 2 = 512.
  PackedTensor v = Unwrap(QuantizeValues(Random({2, 64, 16}, 4), spec));
  EXPECT_EQ(v.group_size, 16);
  EXPECT_EQ(v.codes.sizes(), (std::vector<int64_t>{2, 64, 4}));
  EXPECT_EQ(v.Bytes(), 1024);
  EXPECT_EQ(PackedBytes(2, 64, 16, spec, /*keys=*/false), 1024);

  // 4 bits doubles the codes only: 1024 + 256.
  EXPECT_EQ(PackedBytes(2, 64, 16, {.bits = 4, .group_size = 32}, /*keys=*/true), 1280);
  // A group of 3 two-bit codes still takes a whole byte.
  EXPECT_EQ(PackedBytes(1, 2, 12, {.bits = 2, .group_size = 3}, /*keys=*/false), 2 * 4 * (1 + 4));
}

TEST(KvQuantTest, FourBitsBeatTwoBits) {
  const at::Tensor keys = RandomKeys({2, 64, 16}, 5);
  const at::Tensor values = Random({2, 64, 16}, 6);
  auto error = [&](int bits, bool is_keys) {
    const QuantSpec spec{.bits = bits, .group_size = 32};
    PackedTensor p = Unwrap(is_keys ? QuantizeKeys(keys, spec) : QuantizeValues(values, spec));
    return (Dequantize(p, at::kFloat) - (is_keys ? keys : values)).abs().mean().item<double>();
  };
  EXPECT_LT(error(4, true), error(2, true) / 3);
  EXPECT_LT(error(4, false), error(2, false) / 3);
}

TEST(KvQuantTest, ConcatMatchesQuantizingAtOnce) {
  const QuantSpec spec{.bits = 2, .group_size = 32};
  const at::Tensor keys = RandomKeys({2, 96, 16}, 7);
  // Keys arrive in blocks of G tokens (KIVI flushes whole groups).
  PackedTensor streamed;
  for (int64_t b = 0; b < 3; ++b) {
    PackedTensor block = Unwrap(QuantizeKeys(keys.narrow(1, 32 * b, 32), spec));
    streamed = Unwrap(Concat(streamed, block));
  }
  PackedTensor whole = Unwrap(QuantizeKeys(keys, spec));
  EXPECT_EQ(streamed.shape, whole.shape);
  EXPECT_TRUE(at::equal(streamed.codes, whole.codes));
  EXPECT_TRUE(at::equal(Dequantize(streamed, at::kFloat), Dequantize(whole, at::kFloat)));
  EXPECT_EQ(streamed.Bytes(), PackedBytes(2, 96, 16, spec, /*keys=*/true));

  // Values arrive token by token.
  const at::Tensor values = Random({2, 10, 16}, 8);
  PackedTensor v;
  for (int64_t t = 0; t < 10; ++t) {
    v = Unwrap(
        Concat(v, Unwrap(QuantizeValues(values.narrow(1, t, 1), {.bits = 4, .group_size = 8}))));
  }
  PackedTensor v_whole = Unwrap(QuantizeValues(values, {.bits = 4, .group_size = 8}));
  EXPECT_EQ(v.tokens(), 10);
  EXPECT_TRUE(at::equal(v.codes, v_whole.codes));
  EXPECT_TRUE(at::equal(v.scale, v_whole.scale));
}

TEST(KvQuantTest, SelectTokensGathersPerHead) {
  const at::Tensor values = Random({2, 10, 8}, 9);
  PackedTensor v = Unwrap(QuantizeValues(values, {.bits = 2, .group_size = 4}));
  const at::Tensor index = at::tensor(std::vector<int64_t>{9, 0, 5, 1, 2, 3}).view({2, 3});
  PackedTensor kept = Unwrap(SelectTokens(v, index));
  EXPECT_EQ(kept.shape, (std::vector<int64_t>{2, 3, 8}));
  EXPECT_EQ(kept.Bytes(), PackedBytes(2, 3, 8, {.bits = 2, .group_size = 4}, /*keys=*/false));
  const at::Tensor full = Dequantize(v, at::kFloat);
  const at::Tensor expected = at::gather(full, 1, index.unsqueeze(-1).expand({2, 3, 8}));
  EXPECT_TRUE(at::equal(Dequantize(kept, at::kFloat), expected));

  PackedTensor k = Unwrap(QuantizeKeys(RandomKeys({2, 32, 8}, 10), {.bits = 2, .group_size = 32}));
  EXPECT_EQ(SelectTokens(k, index).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(SelectTokens(v, index + 1).ok());              // 10 is out of range
  EXPECT_FALSE(SelectTokens(v, index.narrow(0, 0, 1)).ok());  // one head only
  EXPECT_FALSE(SelectTokens(v, index.to(at::kFloat)).ok());   // not integer
  EXPECT_FALSE(SelectTokens(PackedTensor{}, index).ok());
}

TEST(KvQuantTest, BadInputsGiveErrors) {
  const at::Tensor x = Random({2, 64, 16}, 11);
  EXPECT_EQ(QuantizeKeys(x, {.bits = 3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(QuantizeValues(x, {.bits = 8}).ok());
  EXPECT_FALSE(QuantizeKeys(x, {.bits = 2, .group_size = 0}).ok());
  EXPECT_FALSE(QuantizeValues(x, {.bits = 2, .group_size = -4}).ok());
  EXPECT_FALSE(QuantizeKeys(x.narrow(1, 0, 33), {}).ok());  // T not a multiple of G
  EXPECT_FALSE(QuantizeValues(Random({2, 4, 24}, 12), {.group_size = 16}).ok());  // d % G
  EXPECT_FALSE(QuantizeKeys(x[0], {}).ok());                                      // not 3-D
  EXPECT_FALSE(QuantizeValues(at::ones({2, 4, 16}, at::kInt), {}).ok());
  EXPECT_FALSE(QuantizeKeys(at::Tensor(), {}).ok());
  EXPECT_EQ(PackedBytes(2, 33, 16, {}, /*keys=*/true), -1);
  EXPECT_EQ(PackedBytes(2, 64, 16, {.bits = 3}, /*keys=*/true), -1);

  PackedTensor k2 = Unwrap(QuantizeKeys(x, {.bits = 2}));
  PackedTensor k4 = Unwrap(QuantizeKeys(x, {.bits = 4}));
  PackedTensor v2 = Unwrap(QuantizeValues(x, {.bits = 2, .group_size = 16}));
  EXPECT_FALSE(Concat(k2, k4).ok());
  EXPECT_FALSE(Concat(k2, v2).ok());
  EXPECT_FALSE(Concat(k2, Unwrap(QuantizeKeys(Random({1, 32, 16}, 13), {}))).ok());
}

TEST(KvQuantTest, HandlesEmptyAndHalfInputs) {
  PackedTensor empty_keys = Unwrap(QuantizeKeys(at::zeros({2, 0, 16}), {}));
  EXPECT_EQ(empty_keys.Bytes(), 0);
  EXPECT_EQ(Dequantize(empty_keys, at::kFloat).sizes(), (std::vector<int64_t>{2, 0, 16}));
  EXPECT_FALSE(Dequantize(PackedTensor{}, at::kFloat).defined());

  const at::Tensor half = Random({2, 32, 16}, 14).to(at::kHalf);
  PackedTensor v = Unwrap(QuantizeValues(half, {.bits = 4, .group_size = 16}));
  const at::Tensor out = Dequantize(v, at::kBFloat16);
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_EQ(out.sizes(), half.sizes());
  EXPECT_LT((out.to(at::kFloat) - half.to(at::kFloat)).abs().max().item<float>(), 0.5f);
}

}  // namespace
}  // namespace kvguard::engine
