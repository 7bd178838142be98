// File: services/engine/cpu_matvec_avx512bf16.cc
//
// MatVec for bf16 weights on CPUs with AVX512_BF16: vdpbf16ps multiplies 32
// bf16 pairs and accumulates in f32 in one instruction, where the generic
// path needs a widen, a shift and an FMA per 16 weights; the loop is then
// bound by memory alone. The activations come in as bf16 (MatVec rounds them,
// as a bf16 GEMM does). Compiled with -mavx512bf16; only called when the CPU has it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "services/engine/cpu_matvec_avx512.h"
#include "services/engine/cpu_matvec_simd.h"

namespace kvguard::engine::cpu {
namespace {

constexpr int kUnroll = 4;

template <int kR>
inline void Row(const uint16_t* w, int64_t cols, const uint16_t* x, float (&sums)[4]) {
  __m512 acc[kUnroll][kR];
  for (int u = 0; u < kUnroll; ++u)
    for (int r = 0; r < kR; ++r) acc[u][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kUnroll * 32 <= cols; i += kUnroll * 32) {
    for (int u = 0; u < kUnroll; ++u) {
      _mm_prefetch(reinterpret_cast<const char*>(w + i + u * 32) + simd::kPrefetchBytes,
                   _MM_HINT_T0);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i + u * 32);
      for (int r = 0; r < kR; ++r) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + r * cols + i + u * 32);
        acc[u][r] = _mm512_dpbf16_ps(acc[u][r], wv, xv);
      }
    }
  }
  for (; i + 32 <= cols; i += 32) {
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i);
    for (int r = 0; r < kR; ++r)
      acc[0][r] = _mm512_dpbf16_ps(acc[0][r], wv, (__m512bh)_mm512_loadu_si512(x + r * cols + i));
  }
  for (int r = 0; r < kR; ++r) {
    for (int u = 1; u < kUnroll; ++u) acc[0][r] = _mm512_add_ps(acc[0][r], acc[u][r]);
    float s = _mm512_reduce_add_ps(acc[0][r]);
    for (int64_t j = i; j < cols; ++j) s += simd::ToFloat(w[j]) * simd::ToFloat(x[r * cols + j]);
    sums[r] = s;
  }
}

// As cpu_matvec_avx512.cc's ShortRows, on vdpbf16ps (cols % 32 == 0).
void ShortRows(const WeightMatrix& m, const uint16_t* x, int64_t n, void* y, OutputType out,
               const void* residual, int64_t begin, int64_t end) {
  const uint16_t* w = static_cast<const uint16_t*>(m.data);
  const int64_t cols = m.cols;
  for (int64_t o = begin; o < end; o += 16) {
    for (int64_t r = 0; r < n; ++r) {
      __m512 acc[16];
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (int64_t i = 0; i < cols; i += 32) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + r * cols + i);
        for (int k = 0; k < 16; ++k) {
          acc[k] =
              _mm512_dpbf16_ps(acc[k], (__m512bh)_mm512_loadu_si512(w + (o + k) * cols + i), xv);
        }
      }
      avx512::StoreSixteen(m, avx512::Reduce16(acc), r, o, y, out, residual);
    }
  }
}

}  // namespace

void MatVecRangeAvx512Bf16(const WeightMatrix& m, const uint16_t* x, int64_t n, void* y,
                           OutputType out, const void* residual, int64_t begin, int64_t end) {
  if (m.cols % 32 == 0 && m.cols <= avx512::kShortRowColumns && end - begin >= 16) {
    const int64_t whole = begin + (end - begin) / 16 * 16;
    ShortRows(m, x, n, y, out, residual, begin, whole);
    begin = whole;
  }
  const uint16_t* w = static_cast<const uint16_t*>(m.data);
  const int64_t cols = m.cols;
  float sums[4];
  for (int64_t o = begin; o < end; ++o) {
    const float bias = m.bias != nullptr ? m.bias[o] : 0.0f;
    for (int64_t r0 = 0; r0 < n; r0 += 4) {
      const int64_t nr = n - r0 >= 4 ? 4 : n - r0;
      const uint16_t* xr = x + r0 * cols;
      switch (nr) {
        case 4:
          Row<4>(w + o * cols, cols, xr, sums);
          break;
        case 3:
          Row<3>(w + o * cols, cols, xr, sums);
          break;
        case 2:
          Row<2>(w + o * cols, cols, xr, sums);
          break;
        default:
          Row<1>(w + o * cols, cols, xr, sums);
      }
      for (int64_t r = 0; r < nr; ++r)
        simd::Store(y, out, (r0 + r) * m.rows + o, sums[r] + bias, residual);
    }
  }
}

}  // namespace kvguard::engine::cpu
