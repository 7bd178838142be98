// File: services/engine/cpu_matvec_avx512.h
//
// AVX-512 pieces shared by the MatVec kernels that are compiled with
// -mavx512f (cpu_matvec_avx512.cc, cpu_matvec_avx512bf16.cc). Private to cpu_matvec.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "services/engine/cpu_matvec_simd.h"

namespace kvguard::engine::cpu::avx512 {

// Rows at most this wide take the short-row kernels: 16 weight rows against one activation
// row, with one register of partial sums per weight row.
inline constexpr int64_t kShortRowColumns = 512;

// The lane sums of v[0..15], in order, in one register: a transpose-and-add tree of 45
// instructions where 16 _mm512_reduce_add_ps take ~130. For short rows (attention over a
// 64-wide head, a tiny model's 64- or 128-wide layers) the horizontal sums, not the
// products, were most of the work.
inline __m512 Reduce16(const __m512 (&v)[16]) {
  __m512 u[8];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m512 w[4];
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: the lane's sums of 4 sources
    const __m512d a = _mm512_castps_pd(u[2 * i]), b = _mm512_castps_pd(u[2 * i + 1]);
    w[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  __m512 z[2];
  for (int i = 0; i < 2; ++i) {  // lanes 0+1 and 2+3 of two w's side by side
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xdd));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88),
                       _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
}

// Stores the dot product of output row o with activation row r as MatVec's contract says (row
// scales for int8, bias, residual, output type).
inline void StoreDot(const WeightMatrix& m, float dot, int64_t r, int64_t o, void* y,
                     OutputType out, const void* residual) {
  const float scale = m.scales != nullptr ? m.scales[o] : 1.0f;
  const float bias = m.bias != nullptr ? m.bias[o] : 0.0f;
  simd::Store(y, out, r * m.rows + o, dot * scale + bias, residual);
}

// StoreDot for output rows [o, o + 16) of activation row r.
inline void StoreSixteen(const WeightMatrix& m, __m512 sums, int64_t r, int64_t o, void* y,
                         OutputType out, const void* residual) {
  alignas(64) float s[16];
  _mm512_store_ps(s, sums);
  for (int k = 0; k < 16; ++k) StoreDot(m, s[k], r, o + k, y, out, residual);
}

}  // namespace kvguard::engine::cpu::avx512
