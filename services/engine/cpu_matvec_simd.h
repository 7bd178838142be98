// File: services/engine/cpu_matvec_simd.h
//
// The MatVec loop nest, written once over a vector traits type `V` and
// compiled once per instruction set (cpu_matvec_avx2.cc, cpu_matvec_avx512.cc
// include it with their own compiler flags). Private to cpu_matvec.
//
// Each weight element is loaded and converted once per four activation rows;
// with more activation rows the same weight row is reused from L1.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

#include "services/engine/cpu_matvec.h"

namespace kvguard::engine::cpu::simd {

// How far ahead of the weight stream to prefetch. The hardware prefetcher
// alone leaves the loop stalled on loads once it does more than one FMA per
// weight (2+ activation rows): 2 KiB ahead took bf16 n=2 from 17 to 31 GB/s
// on the 2-core Zen 4 (scripts/bench_engine.sh's machine).
inline constexpr int kPrefetchBytes = 2048;

inline float ToFloat(float w) { return w; }
inline float ToFloat(int8_t w) { return static_cast<float>(w); }
inline float ToFloat(uint16_t w) {
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// value rounded to the nearest bf16 (ties to even; NaN stays a quiet NaN), kept as an f32. No
// branch, so loops over it vectorize.
inline float RoundThroughBf16(float value) {
  const auto u = std::bit_cast<uint32_t>(value);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const uint32_t quiet_nan = (u & 0xffff0000u) | 0x400000u;
  return std::bit_cast<float>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// The same rounding, as the bf16 bits.
inline uint16_t RoundToBf16(float value) {
  return static_cast<uint16_t>(std::bit_cast<uint32_t>(RoundThroughBf16(value)) >> 16);
}

// exp(x) in plain arithmetic, so that loops over it vectorize (std::exp stays a
// scalar call): Cephes' expf, ~1 ulp like the Sleef exp libtorch's ops use.
// Below -87 it returns exp(-87); from ~88.4 on, +inf.
inline float Exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 89.0f ? 89.0f : x);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

inline float Load(const void* p, OutputType type, int64_t index) {
  return type == OutputType::kF32 ? static_cast<const float*>(p)[index]
                                  : ToFloat(static_cast<const uint16_t*>(p)[index]);
}

// As the unfused ops round: bf16 rounds the product, then the residual sum.
inline float Round(float value, OutputType type) {
  return type == OutputType::kF32 ? value : RoundThroughBf16(value);
}

inline void Store(void* y, OutputType out, int64_t index, float value, const void* residual) {
  if (residual != nullptr) value = Round(value, out) + Load(residual, out, index);
  if (out == OutputType::kF32)
    static_cast<float*>(y)[index] = value;
  else
    static_cast<uint16_t*>(y)[index] = RoundToBf16(value);
}

// One weight row against kR activation rows. The row is read as one
// sequential stream (what the hardware prefetcher follows best: interleaving
// several rows measured ~40% slower) with V::kUnroll independent accumulators
// per activation row to cover the FMA latency.
template <class V, class W, int kR, int kU>
inline void Block(const W* w, int64_t cols, const float* x, float (&sums)[4]) {
  constexpr int kL = V::kLanes;
  typename V::Reg acc[kU][kR];
  for (int u = 0; u < kU; ++u)
    for (int r = 0; r < kR; ++r) acc[u][r] = V::Zero();
  int64_t i = 0;
  for (; i + kU * kL <= cols; i += kU * kL) {
    __builtin_prefetch(reinterpret_cast<const char*>(w + i) + kPrefetchBytes, 0, 3);
    for (int u = 0; u < kU; ++u) {
      const typename V::Reg wv = V::Load(w + i + u * kL);
      for (int r = 0; r < kR; ++r)
        acc[u][r] = V::Fma(wv, V::LoadF32(x + r * cols + i + u * kL), acc[u][r]);
    }
  }
  for (; i + kL <= cols; i += kL) {
    const typename V::Reg wv = V::Load(w + i);
    for (int r = 0; r < kR; ++r) acc[0][r] = V::Fma(wv, V::LoadF32(x + r * cols + i), acc[0][r]);
  }
  for (int r = 0; r < kR; ++r) {
    for (int u = 1; u < kU; ++u) acc[0][r] = V::Add(acc[0][r], acc[u][r]);
    float s = V::Sum(acc[0][r]);
    for (int64_t j = i; j < cols; ++j) s += ToFloat(w[j]) * x[r * cols + j];
    sums[r] = s;
  }
}

template <class V, class W, int kU>
void MatVecRows(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                const void* residual, int64_t begin, int64_t end) {
  const W* w = static_cast<const W*>(m.data);
  const int64_t cols = m.cols;
  float sums[4];
  for (int64_t o = begin; o < end; ++o) {
    const W* row = w + o * cols;
    const float scale = m.scales != nullptr ? m.scales[o] : 1.0f;
    const float bias = m.bias != nullptr ? m.bias[o] : 0.0f;
    for (int64_t r0 = 0; r0 < n; r0 += 4) {
      const int64_t nr = n - r0 >= 4 ? 4 : n - r0;
      const float* xr = x + r0 * cols;
      switch (nr) {
        case 4:
          Block<V, W, 4, kU>(row, cols, xr, sums);
          break;
        case 3:
          Block<V, W, 3, kU>(row, cols, xr, sums);
          break;
        case 2:
          Block<V, W, 2, kU>(row, cols, xr, sums);
          break;
        default:
          Block<V, W, 1, kU>(row, cols, xr, sums);
      }
      for (int64_t r = 0; r < nr; ++r)
        Store(y, out, (r0 + r) * m.rows + o, sums[r] * scale + bias, residual);
    }
  }
}

// Output rows [begin, end) of y = x w^T (+ bias), all n activation rows, four
// at a time (a row of a decode-sized matrix stays in L1 between the groups).
template <class V, class W>
void MatVecRange(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                 const void* residual, int64_t begin, int64_t end) {
  const int64_t cols = m.cols;
  // Rows shorter than the unrolled stride (attention's head_dim, tiny models)
  // take one accumulator per activation row: fewer registers to zero and sum.
  if (cols >= V::kUnroll * V::kLanes) {
    MatVecRows<V, W, V::kUnroll>(m, x, n, y, out, residual, begin, end);
  } else {
    MatVecRows<V, W, 1>(m, x, n, y, out, residual, begin, end);
  }
}

template <class V>
void MatVecRangeAny(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                    const void* residual, int64_t begin, int64_t end) {
  switch (m.type) {
    case WeightType::kF32:
      MatVecRange<V, float>(m, x, n, y, out, residual, begin, end);
      break;
    case WeightType::kBF16:
      MatVecRange<V, uint16_t>(m, x, n, y, out, residual, begin, end);
      break;
    case WeightType::kInt8:
      MatVecRange<V, int8_t>(m, x, n, y, out, residual, begin, end);
      break;
  }
}

// VecMat: kC registers of columns [c, c + kC * lanes) of y[r] += x[r] w for
// kR activation rows; each weight row is loaded once and used by every row.
template <class V, class W, int kR, int kC>
inline void VecMatColumns(const W* w, int64_t rows, int64_t cols, int64_t c, const float* x,
                          float* y) {
  constexpr int kL = V::kLanes;
  typename V::Reg acc[kR][kC];
  for (int r = 0; r < kR; ++r)
    for (int k = 0; k < kC; ++k) acc[r][k] = V::LoadF32(y + r * cols + c + k * kL);
  for (int64_t i = 0; i < rows; ++i) {
    typename V::Reg wv[kC];
    for (int k = 0; k < kC; ++k) wv[k] = V::Load(w + i * cols + c + k * kL);
    for (int r = 0; r < kR; ++r) {
      const typename V::Reg xv = V::Broadcast(x[r * rows + i]);
      for (int k = 0; k < kC; ++k) acc[r][k] = V::Fma(wv[k], xv, acc[r][k]);
    }
  }
  for (int r = 0; r < kR; ++r)
    for (int k = 0; k < kC; ++k) V::StoreF32(y + r * cols + c + k * kL, acc[r][k]);
}

template <class V, class W, int kR>
void VecMatRows(const W* w, int64_t rows, int64_t cols, const float* x, float* y) {
  constexpr int kL = V::kLanes;
  int64_t c = 0;
  for (; c + 4 * kL <= cols; c += 4 * kL) VecMatColumns<V, W, kR, 4>(w, rows, cols, c, x, y);
  // Two registers at once, so a 32-wide head (AVX-512) reads its values in one pass.
  for (; c + 2 * kL <= cols; c += 2 * kL) VecMatColumns<V, W, kR, 2>(w, rows, cols, c, x, y);
  for (; c + kL <= cols; c += kL) VecMatColumns<V, W, kR, 1>(w, rows, cols, c, x, y);
  for (; c < cols; ++c) {
    for (int r = 0; r < kR; ++r) {
      float s = y[r * cols + c];
      for (int64_t i = 0; i < rows; ++i) s += ToFloat(w[i * cols + c]) * x[r * rows + i];
      y[r * cols + c] = s;
    }
  }
}

// y[r][c] += sum_i x[r][i] w[i][c]: x [n, rows], w [rows, cols], y [n, cols], all f32 but w.
template <class V, class W>
void VecMatAccumulate(const W* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y) {
  for (int64_t r0 = 0; r0 < n; r0 += 4) {
    const float* xr = x + r0 * rows;
    float* yr = y + r0 * cols;
    switch (n - r0 >= 4 ? 4 : n - r0) {
      case 4:
        VecMatRows<V, W, 4>(w, rows, cols, xr, yr);
        break;
      case 3:
        VecMatRows<V, W, 3>(w, rows, cols, xr, yr);
        break;
      case 2:
        VecMatRows<V, W, 2>(w, rows, cols, xr, yr);
        break;
      default:
        VecMatRows<V, W, 1>(w, rows, cols, xr, yr);
    }
  }
}

template <class V>
void VecMatAny(const WeightMatrix& m, const float* x, int64_t n, float* y) {
  switch (m.type) {
    case WeightType::kF32:
      VecMatAccumulate<V>(static_cast<const float*>(m.data), m.rows, m.cols, x, n, y);
      break;
    case WeightType::kBF16:
      VecMatAccumulate<V>(static_cast<const uint16_t*>(m.data), m.rows, m.cols, x, n, y);
      break;
    case WeightType::kInt8:
      VecMatAccumulate<V>(static_cast<const int8_t*>(m.data), m.rows, m.cols, x, n, y);
      break;
  }
}

}  // namespace kvguard::engine::cpu::simd
