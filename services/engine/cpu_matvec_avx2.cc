// File: services/engine/cpu_matvec_avx2.cc
//
// MatVec's loop nest on 8-lane AVX2 registers with FMA. Compiled with
// -mavx2 -mfma; only called when the CPU has both (cpu_matvec.cc).
#include <immintrin.h>

#include "services/engine/cpu_matvec_simd.h"

namespace kvguard::engine::cpu {
namespace {

struct Avx2 {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kUnroll = 2;  // 2 x 4 accumulators of 16 registers
  static Reg Zero() { return _mm256_setzero_ps(); }
  static Reg Add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg Fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg LoadF32(const float* p) { return _mm256_loadu_ps(p); }
  static void StoreF32(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static Reg Broadcast(float v) { return _mm256_set1_ps(v); }
  static Reg Load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg Load(const uint16_t* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static Reg Load(const int8_t* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static float Sum(Reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace

void MatVecRangeAvx2(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                     const void* residual, int64_t begin, int64_t end) {
  simd::MatVecRangeAny<Avx2>(m, x, n, y, out, residual, begin, end);
}

void VecMatAvx2(const WeightMatrix& m, const float* x, int64_t n, float* y) {
  simd::VecMatAny<Avx2>(m, x, n, y);
}

}  // namespace kvguard::engine::cpu
