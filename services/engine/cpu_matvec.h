// File: services/engine/cpu_matvec.h
//
// Weight-streaming matrix-vector products for CPU decode (no torch).
//
// A decode step multiplies a few activation rows (one per sequence in the
// batch) by every weight matrix of the model. Its time is the time to read the
// weights once from memory, so the kernel streams each weight row exactly once
// for all activation rows together, converts bf16/int8 weights to f32 in
// registers, and accumulates in f32. Generic GEMM libraries tuned for large
// products reach about half of the read bandwidth on these shapes.
//
//   WeightMatrix w{.type = WeightType::kBF16, .data = ptr, .rows = out, .cols = in};
//   MatVec(w, x, /*n=*/2, y, OutputType::kF32, /*threads=*/2);   // y[2, out] = x[2, in] w^T
//
// Every fast path (AVX-512, AVX2+FMA) is checked against MatVecReference in
// tests/unit/cpu_matvec_test.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvguard::engine::cpu {

enum class WeightType { kF32, kBF16, kInt8 };
enum class OutputType { kF32, kBF16 };

// A row-major [rows, cols] weight matrix (rows = output features). kInt8 rows
// are symmetric per-row quantized: w[o][i] = scales[o] * q[o][i].
struct WeightMatrix {
  WeightType type = WeightType::kF32;
  const void* data = nullptr;
  const float* scales = nullptr;  // kInt8 only: one per row
  const float* bias = nullptr;    // optional, f32, one per row
  int64_t rows = 0;
  int64_t cols = 0;
};

// The most activation rows MatVec takes in one call; a decode batch larger
// than this is a GEMM, which the BLAS/oneDNN path does better.
inline constexpr int64_t kMaxMatVecRows = 16;

// y[r][o] = bias[o] + sum_i w[o][i] * x[r][i] for r < n; with kBF16 weights x
// is first rounded to bf16, as a bf16 GEMM takes it (exact for a bf16 model). x: n rows of f32 with
// stride w.cols; y: n rows of `out` type with stride w.rows. 1 <= n <= kMaxMatVecRows.
// With `residual` (same type and layout as y) y = residual + that, rounded as a
// separate add would be (bf16: product rounded, then the sum rounded).
// Splits output rows over `threads` OpenMP threads when the matrix is large enough.
void MatVec(const WeightMatrix& w, const float* x, int64_t n, void* y, OutputType out, int threads,
            const void* residual = nullptr);

// The same product in plain scalar code: the reference every fast path is tested against.
void MatVecReference(const WeightMatrix& w, const float* x, int64_t n, void* y, OutputType out,
                     const void* residual = nullptr);

// The transposed product, for attention's probabilities times values:
// y[r][c] += sum_i x[r][i] w[i][c] for r < n (x: [n, w.rows], y: [n, w.cols],
// f32, accumulated into). bf16 weights: x rounded to bf16 first, as above.
// Any n; single-threaded (attention splits heads over threads itself).
void VecMat(const WeightMatrix& w, const float* x, int64_t n, float* y);
void VecMatReference(const WeightMatrix& w, const float* x, int64_t n, float* y);

// The elementwise steps between a decode step's products, fused into one pass
// that also writes MatVec's f32 input. `type` is the activations' type; with
// kBF16 every intermediate is rounded where the unfused libtorch ops round.
// RMSNorm (as HF: normalise in f32, round, scale): out = w * (x / rms(x)).
void RmsNormRows(const void* x, OutputType type, int64_t n, int64_t d, const void* weight,
                 float eps, float* out);
// SwiGLU of rows laid out [gate (f) | up (f)]: out = silu(gate) * up.
void SiluMulRows(const void* gate_up, OutputType type, int64_t n, int64_t f, float* out);

// Which instruction set MatVec dispatches to on this CPU: "avx512bf16" (bf16
// weights by vdpbf16ps, others as avx512), "avx512", "avx2" or "scalar".
// KVG_MATVEC_ISA=scalar|avx2|avx512|avx512bf16 in the environment caps it (for comparisons).
std::string MatVecIsa();

// The instruction sets this CPU runs, and MatVec on a chosen one of them
// (single-threaded; for tests that check every path against the reference).
std::vector<std::string> SupportedMatVecIsas();
void MatVecOn(const std::string& isa, const WeightMatrix& w, const float* x, int64_t n, void* y,
              OutputType out);
void VecMatOn(const std::string& isa, const WeightMatrix& w, const float* x, int64_t n, float* y);

// bf16 <-> f32 (round to nearest even, NaN kept quiet).
void Bf16ToF32(const uint16_t* in, float* out, int64_t count);
uint16_t F32ToBf16(float value);

// w = scales[o] * q for a whole int8 matrix, into f32 or bf16 (for a prefill
// GEMM), over `threads` OpenMP threads.
void DequantizeRowsInt8(const int8_t* q, const float* scales, int64_t rows, int64_t cols, void* out,
                        OutputType type, int threads);

// Symmetric per-row int8 quantization of a row-major f32 matrix: scale = max|w| / 127.
void QuantizeRowsInt8(const float* w, int64_t rows, int64_t cols, int8_t* q, float* scales);

}  // namespace kvguard::engine::cpu
