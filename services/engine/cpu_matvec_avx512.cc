// File: services/engine/cpu_matvec_avx512.cc
//
// MatVec's loop nest on 16-lane AVX-512 registers. Compiled with
// -mavx512f -mavx512bw -mavx512dq -mfma; only called when the CPU has AVX-512 (cpu_matvec.cc).
// gcc 12's AVX-512 headers trip -Wuninitialized on their own masked builtins
// once inlined at -O3 (GCC bug 105593); nothing in this file is uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "services/engine/cpu_matvec_avx512.h"

#include <immintrin.h>

#include "services/engine/cpu_matvec_simd.h"

namespace kvguard::engine::cpu {
namespace {

struct Avx512 {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kUnroll = 4;  // 4 x 4 accumulators of 32 registers
  static Reg Zero() { return _mm512_setzero_ps(); }
  static Reg Add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg Fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg LoadF32(const float* p) { return _mm512_loadu_ps(p); }
  static void StoreF32(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg Broadcast(float v) { return _mm512_set1_ps(v); }
  static Reg Load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg Load(const uint16_t* p) {
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static Reg Load(const int8_t* p) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static float Sum(Reg v) { return _mm512_reduce_add_ps(v); }
};

// Output rows [begin, end) for rows of cols <= kShortRowColumns, cols % 16 == 0: each group
// of 16 weight rows meets each activation row once, one accumulator per weight row.
template <class W>
void ShortRows(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
               const void* residual, int64_t begin, int64_t end) {
  const W* w = static_cast<const W*>(m.data);
  const int64_t cols = m.cols;
  int64_t o = begin;
  for (; o + 16 <= end; o += 16) {
    int64_t r = 0;
    // Four activation rows at a time: 4 x 4 blocks of (activation, weight) rows load 8
    // registers per 16 products where one activation row against 16 weight rows loads 17 (a
    // prefill's many rows were bound by those loads).
    for (; r + 4 <= n; r += 4) {
      for (int64_t b = 0; b < 16; b += 4) {
        __m512 acc[16];
        for (auto& a : acc) a = _mm512_setzero_ps();
        for (int64_t i = 0; i < cols; i += 16) {
          __m512 wv[4];
          for (int k = 0; k < 4; ++k) wv[k] = Avx512::Load(w + (o + b + k) * cols + i);
          for (int a = 0; a < 4; ++a) {
            const __m512 xv = _mm512_loadu_ps(x + (r + a) * cols + i);
            for (int k = 0; k < 4; ++k) acc[a * 4 + k] = _mm512_fmadd_ps(wv[k], xv, acc[a * 4 + k]);
          }
        }
        alignas(64) float sums[16];
        _mm512_store_ps(sums, avx512::Reduce16(acc));
        for (int a = 0; a < 4; ++a) {
          for (int k = 0; k < 4; ++k)
            avx512::StoreDot(m, sums[a * 4 + k], r + a, o + b + k, y, out, residual);
        }
      }
    }
    for (; r < n; ++r) {
      __m512 acc[16];
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (int64_t i = 0; i < cols; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + r * cols + i);
        for (int k = 0; k < 16; ++k)
          acc[k] = _mm512_fmadd_ps(Avx512::Load(w + (o + k) * cols + i), xv, acc[k]);
      }
      avx512::StoreSixteen(m, avx512::Reduce16(acc), r, o, y, out, residual);
    }
  }
  if (o < end) simd::MatVecRangeAny<Avx512>(m, x, n, y, out, residual, o, end);
}

}  // namespace

void MatVecRangeAvx512(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                       const void* residual, int64_t begin, int64_t end) {
  if (m.cols % 16 == 0 && m.cols <= avx512::kShortRowColumns && end - begin >= 16) {
    switch (m.type) {
      case WeightType::kF32:
        return ShortRows<float>(m, x, n, y, out, residual, begin, end);
      case WeightType::kBF16:
        return ShortRows<uint16_t>(m, x, n, y, out, residual, begin, end);
      case WeightType::kInt8:
        return ShortRows<int8_t>(m, x, n, y, out, residual, begin, end);
    }
  }
  simd::MatVecRangeAny<Avx512>(m, x, n, y, out, residual, begin, end);
}

void VecMatAvx512(const WeightMatrix& m, const float* x, int64_t n, float* y) {
  simd::VecMatAny<Avx512>(m, x, n, y);
}

}  // namespace kvguard::engine::cpu
