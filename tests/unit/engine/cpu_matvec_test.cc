// Every MatVec path (scalar, AVX2, AVX-512, threaded) against the scalar
// reference, for f32, bf16 and int8 weights, odd shapes (tails of every
// width), 1..16 activation rows, bias, and bf16 output; VecMat likewise.
#include "services/engine/cpu_matvec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace kvguard::engine::cpu {
namespace {

struct Problem {
  WeightMatrix w;
  std::vector<float> f32, bias, scales, x;
  std::vector<uint16_t> bf16;
  std::vector<int8_t> q8;
};

Problem Make(WeightType type, int64_t rows, int64_t cols, int64_t n, bool with_bias,
             uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem p;
  p.f32.resize(rows * cols);
  for (float& v : p.f32) v = normal(rng) * 0.05f;
  p.x.resize(n * cols);
  for (float& v : p.x) v = normal(rng);
  if (with_bias) {
    p.bias.resize(rows);
    for (float& v : p.bias) v = normal(rng);
  }
  p.w = {.type = type, .bias = with_bias ? p.bias.data() : nullptr, .rows = rows, .cols = cols};
  switch (type) {
    case WeightType::kF32:
      p.w.data = p.f32.data();
      break;
    case WeightType::kBF16:
      for (float v : p.f32) p.bf16.push_back(F32ToBf16(v));
      p.w.data = p.bf16.data();
      break;
    case WeightType::kInt8:
      p.q8.resize(rows * cols);
      p.scales.resize(rows);
      QuantizeRowsInt8(p.f32.data(), rows, cols, p.q8.data(), p.scales.data());
      p.w.data = p.q8.data();
      p.w.scales = p.scales.data();
      break;
  }
  return p;
}

void ExpectNear(const std::vector<float>& want, const std::vector<float>& got, int64_t cols,
                const std::string& what) {
  ASSERT_EQ(want.size(), got.size());
  // f32 accumulation of `cols` products of magnitude ~0.05 vs a double reference.
  const float tolerance = 1e-5f * static_cast<float>(cols) + 1e-5f;
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(want[i], got[i], tolerance) << what << " at " << i;
}

TEST(CpuMatVecTest, EveryIsaMatchesTheReference) {
  const std::vector<std::string> isas = SupportedMatVecIsas();
  ASSERT_FALSE(isas.empty());
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kInt8}) {
    for (int64_t cols : {1, 7, 8, 15, 16, 17, 32, 64, 128, 172, 257}) {
      for (int64_t rows : {1, 3, 4, 5, 13, 16, 37}) {
        for (int64_t n : {1, 2, 3, 4, 5, 8, 16}) {
          Problem p = Make(type, rows, cols, n, /*with_bias=*/(cols + rows) % 2 == 0,
                           static_cast<uint32_t>(cols * 131 + rows * 7 + n));
          std::vector<float> want(n * rows);
          MatVecReference(p.w, p.x.data(), n, want.data(), OutputType::kF32);
          for (const std::string& isa : isas) {
            std::vector<float> got(n * rows, NAN);
            MatVecOn(isa, p.w, p.x.data(), n, got.data(), OutputType::kF32);
            ExpectNear(want, got, cols,
                       isa + " type " + std::to_string(static_cast<int>(type)) + " " +
                           std::to_string(rows) + "x" + std::to_string(cols) +
                           " n=" + std::to_string(n));
          }
        }
      }
    }
  }
}

// Narrow matrices (cols < 16: attention scores over a tiny head_dim) take
// the AVX2 code from MatVec when AVX-512 is the chosen path.
TEST(CpuMatVecTest, NarrowMatricesThroughTheDispatcherMatchTheReference) {
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kInt8}) {
    for (int64_t cols : {1, 8, 15}) {
      Problem p = Make(type, 37, cols, 3, /*with_bias=*/false, static_cast<uint32_t>(cols));
      std::vector<float> want(3 * 37), got(3 * 37, NAN);
      MatVecReference(p.w, p.x.data(), 3, want.data(), OutputType::kF32);
      MatVec(p.w, p.x.data(), 3, got.data(), OutputType::kF32, 2);
      ExpectNear(want, got, cols, "cols " + std::to_string(cols));
    }
  }
}

// VecMat (y += x w, attention's probabilities times values) on every ISA:
// odd widths (lane tails), any number of rows, accumulating into y.
TEST(CpuMatVecTest, VecMatOnEveryIsaMatchesTheReference) {
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kInt8}) {
    for (int64_t cols : {1, 7, 8, 16, 17, 32, 48, 64, 72}) {
      for (int64_t rows : {1, 5, 33, 200}) {
        for (int64_t n : {1, 2, 4, 5, 7}) {
          Problem p =
              Make(type, rows, cols, n, false, static_cast<uint32_t>(cols * 17 + rows * 3 + n));
          std::vector<float> x(n * rows);  // [n, rows]: one weight per matrix row
          for (size_t i = 0; i < x.size(); ++i) x[i] = p.x[i % p.x.size()] * 0.1f;
          std::vector<float> start(n * cols);
          for (size_t i = 0; i < start.size(); ++i) start[i] = 0.01f * static_cast<float>(i % 7);
          std::vector<float> want = start;
          VecMatReference(p.w, x.data(), n, want.data());
          for (const std::string& isa : SupportedMatVecIsas()) {
            std::vector<float> got = start;
            VecMatOn(isa, p.w, x.data(), n, got.data());
            ExpectNear(want, got, rows,
                       "VecMat " + isa + " type " + std::to_string(static_cast<int>(type)) + " " +
                           std::to_string(rows) + "x" + std::to_string(cols) +
                           " n=" + std::to_string(n));
          }
          std::vector<float> got = start;
          VecMat(p.w, x.data(), n, got.data());
          ExpectNear(want, got, rows, "VecMat dispatched");
        }
      }
    }
  }
}

TEST(CpuMatVecTest, ThreadedSplitCoversEveryRowOnce) {
  // Large enough to be split over threads; rows not a multiple of 4 or of the team.
  for (int threads : {1, 2, 3}) {
    Problem p = Make(WeightType::kBF16, 1027, 300, 3, /*with_bias=*/true, 99);
    std::vector<float> want(3 * 1027), got(3 * 1027, NAN);
    MatVecReference(p.w, p.x.data(), 3, want.data(), OutputType::kF32);
    MatVec(p.w, p.x.data(), 3, got.data(), OutputType::kF32, threads);
    ExpectNear(want, got, 300, "threads " + std::to_string(threads));
  }
}

TEST(CpuMatVecTest, Bf16OutputIsTheRoundedF32Result) {
  Problem p = Make(WeightType::kBF16, 9, 40, 2, /*with_bias=*/false, 5);
  std::vector<float> f32(2 * 9);
  std::vector<uint16_t> bf16(2 * 9);
  MatVec(p.w, p.x.data(), 2, f32.data(), OutputType::kF32, 1);
  MatVec(p.w, p.x.data(), 2, bf16.data(), OutputType::kBF16, 1);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(bf16[i], F32ToBf16(f32[i])) << i;
}

TEST(CpuMatVecTest, Bf16RoundsToNearestEven) {
  float back;
  Bf16ToF32(std::vector<uint16_t>{F32ToBf16(1.0f)}.data(), &back, 1);
  EXPECT_EQ(back, 1.0f);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8)), F32ToBf16(1.0f));
  // Just above halfway rounds up.
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)),
            F32ToBf16(1.0f + std::ldexp(1.0f, -7)));
  EXPECT_TRUE(std::isnan([] {
    float f;
    const uint16_t b = F32ToBf16(NAN);
    Bf16ToF32(&b, &f, 1);
    return f;
  }()));
}

TEST(CpuMatVecTest, Int8QuantizationErrorIsWithinHalfAStep) {
  Problem p = Make(WeightType::kInt8, 6, 50, 1, false, 3);
  for (int64_t o = 0; o < 6; ++o) {
    float peak = 0;
    for (int64_t i = 0; i < 50; ++i) peak = std::max(peak, std::fabs(p.f32[o * 50 + i]));
    EXPECT_FLOAT_EQ(p.scales[o], peak / 127.0f);
    for (int64_t i = 0; i < 50; ++i)
      EXPECT_LE(std::fabs(p.q8[o * 50 + i] * p.scales[o] - p.f32[o * 50 + i]),
                0.5f * p.scales[o] + 1e-7f);
  }
}

}  // namespace
}  // namespace kvguard::engine::cpu
