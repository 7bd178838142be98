#include "services/engine/cpu_matvec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "services/engine/cpu_matvec_simd.h"

namespace kvguard::engine::cpu {

void MatVecRangeAvx512(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                       const void* residual, int64_t begin, int64_t end);
void MatVecRangeAvx2(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                     const void* residual, int64_t begin, int64_t end);
void VecMatAvx512(const WeightMatrix& m, const float* x, int64_t n, float* y);
void VecMatAvx2(const WeightMatrix& m, const float* x, int64_t n, float* y);
void MatVecRangeAvx512Bf16(const WeightMatrix& m, const uint16_t* x, int64_t n, void* y,
                           OutputType out, const void* residual, int64_t begin, int64_t end);

namespace {

struct Scalar {
  using Reg = float;
  static constexpr int kLanes = 1;
  static constexpr int kUnroll = 1;
  static Reg Zero() { return 0.0f; }
  static Reg Add(Reg a, Reg b) { return a + b; }
  static Reg Fma(Reg a, Reg b, Reg c) { return std::fma(a, b, c); }
  static Reg LoadF32(const float* p) { return *p; }
  static void StoreF32(float* p, Reg v) { *p = v; }
  static Reg Broadcast(float v) { return v; }
  template <class W>
  static Reg Load(const W* p) {
    return simd::ToFloat(*p);
  }
  static float Sum(Reg v) { return v; }
};

using RangeFn = void (*)(const WeightMatrix&, const float*, int64_t, void*, OutputType, const void*,
                         int64_t, int64_t);

void MatVecRangeScalar(const WeightMatrix& m, const float* x, int64_t n, void* y, OutputType out,
                       const void* residual, int64_t begin, int64_t end) {
  simd::MatVecRangeAny<Scalar>(m, x, n, y, out, residual, begin, end);
}

using VecMatFn = void (*)(const WeightMatrix&, const float*, int64_t, float*);

void VecMatScalar(const WeightMatrix& m, const float* x, int64_t n, float* y) {
  simd::VecMatAny<Scalar>(m, x, n, y);
}

struct Dispatch {
  RangeFn fn;
  VecMatFn vecmat;
  const char* name;
  bool bf16_dot = false;  // bf16 weights take MatVecRangeAvx512Bf16
  // Matrices narrower than kNarrowColumns (attention over a tiny head_dim)
  // fill 16-lane registers badly; with AVX-512 they take the 8-lane AVX2 code.
  RangeFn narrow_fn = nullptr;
  VecMatFn narrow_vecmat = nullptr;
};

constexpr int64_t kNarrowColumns = 16;

bool HasAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq");
}

bool HasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool HasAvx512Bf16() { return HasAvx512() && __builtin_cpu_supports("avx512bf16"); }

Dispatch Choose() {
  const char* cap = std::getenv("KVG_MATVEC_ISA");
  const std::string limit = cap != nullptr ? cap : "avx512bf16";
  Dispatch d{MatVecRangeScalar, VecMatScalar, "scalar"};
  if (limit == "avx512bf16" && HasAvx512Bf16()) {
    d = {MatVecRangeAvx512, VecMatAvx512, "avx512bf16", true};
  } else if (limit.rfind("avx512", 0) == 0 && HasAvx512()) {
    d = {MatVecRangeAvx512, VecMatAvx512, "avx512"};
  } else if (limit != "scalar" && HasAvx2()) {
    d = {MatVecRangeAvx2, VecMatAvx2, "avx2"};
  }
  const bool avx2 = limit != "scalar" && HasAvx2();
  d.narrow_fn = avx2 ? MatVecRangeAvx2 : d.fn;
  d.narrow_vecmat = avx2 ? VecMatAvx2 : d.vecmat;
  return d;
}

const Dispatch& Chosen() {
  static const Dispatch dispatch = Choose();
  return dispatch;
}

// Below this many weight elements a thread team costs more than it saves.
constexpr int64_t kParallelElements = int64_t{1} << 17;

// 64-byte aligned: the kernels' 512-bit loads of x would otherwise split cache lines.
template <class T>
T* ThreadBuffer(int64_t count) {
  thread_local std::vector<T> buffer;
  constexpr int64_t kPad = 64 / sizeof(T);
  if (static_cast<int64_t>(buffer.size()) < count + kPad) buffer.resize(count + kPad);
  auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<T*>((address + 63) & ~uintptr_t{63});
}

// bf16 weights multiply bf16 activations (as a bf16 GEMM does): x rounded, in
// loops that vectorize (every MatVec and attention step converts its input).
__attribute__((target_clones("avx512f", "avx2", "default"))) void RoundBf16Bits(const float* x,
                                                                                int64_t count,
                                                                                uint16_t* out) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) out[i] = simd::RoundToBf16(x[i]);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void RoundBf16Floats(const float* x,
                                                                                  int64_t count,
                                                                                  float* out) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) out[i] = simd::RoundThroughBf16(x[i]);
}

const uint16_t* RoundedToBf16(const float* x, int64_t count) {
  uint16_t* xb = ThreadBuffer<uint16_t>(count);
  RoundBf16Bits(x, count, xb);
  return xb;
}

const float* RoundedThroughBf16(const float* x, int64_t count) {
  float* xf = ThreadBuffer<float>(count);
  RoundBf16Floats(x, count, xf);
  return xf;
}

int64_t ElementBytes(WeightType type) {
  return type == WeightType::kF32 ? 4 : type == WeightType::kBF16 ? 2 : 1;
}

// Splits output rows over a team when the matrix is large enough. Threads take chunks of rows
// from a shared counter rather than one fixed share each: on a shared machine one core is often
// slowed by a neighbour, and a fixed split leaves the other waiting at the join for it. Each
// chunk is half of the taker's share of what is left (guided scheduling), so chunks shrink
// toward the end and the threads finish together; fixed chunks of an eighth of a share left one
// thread idle for up to a chunk at each of a decode step's ~120 joins (guided: +6% bf16 0.5B
// decode, 8 paired runs). No chunk is under 64 KiB of weights: smaller ones restart the stream
// too often.
template <class Fn>
void ForRowRanges(const WeightMatrix& w, int threads, const Fn& fn) {
  const int team = static_cast<int>(
      std::min<int64_t>(std::max(threads, 1), w.rows * w.cols < kParallelElements ? 1 : w.rows));
  if (team <= 1) {
    fn(int64_t{0}, w.rows);
    return;
  }
  constexpr int64_t kRowAlign = 16, kMinChunkBytes = int64_t{64} << 10;
  const int64_t min_rows = std::max<int64_t>(
      kRowAlign, kMinChunkBytes / (w.cols * ElementBytes(w.type)) / kRowAlign * kRowAlign);
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(team)
  {
    int64_t begin = next.load(std::memory_order_relaxed);
    while (begin < w.rows) {
      const int64_t left = w.rows - begin;
      const int64_t rows =
          std::min(left, std::max(min_rows, left / (2 * team) / kRowAlign * kRowAlign));
      if (next.compare_exchange_weak(begin, begin + rows, std::memory_order_relaxed)) {
        fn(begin, begin + rows);
        begin = next.load(std::memory_order_relaxed);
      }
    }
  }
}

}  // namespace

void MatVec(const WeightMatrix& w, const float* x, int64_t n, void* y, OutputType out, int threads,
            const void* residual) {
  const Dispatch& d = Chosen();
  if (w.cols < kNarrowColumns) {
    if (w.type == WeightType::kBF16) x = RoundedThroughBf16(x, n * w.cols);
    d.narrow_fn(w, x, n, y, out, residual, 0, w.rows);  // narrow: too little work to split
    return;
  }
  if (w.type == WeightType::kBF16 && d.bf16_dot) {
    const uint16_t* xb = RoundedToBf16(x, n * w.cols);
    ForRowRanges(w, threads, [&](int64_t begin, int64_t end) {
      MatVecRangeAvx512Bf16(w, xb, n, y, out, residual, begin, end);
    });
    return;
  }
  if (w.type == WeightType::kBF16) x = RoundedThroughBf16(x, n * w.cols);
  ForRowRanges(w, threads,
               [&](int64_t begin, int64_t end) { d.fn(w, x, n, y, out, residual, begin, end); });
}

void MatVecReference(const WeightMatrix& w, const float* x, int64_t n, void* y, OutputType out,
                     const void* residual) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t o = 0; o < w.rows; ++o) {
      double s = 0;
      for (int64_t i = 0; i < w.cols; ++i) {
        const int64_t k = o * w.cols + i;
        double wv = 0;
        switch (w.type) {
          case WeightType::kF32:
            wv = static_cast<const float*>(w.data)[k];
            break;
          case WeightType::kBF16:
            wv = simd::ToFloat(static_cast<const uint16_t*>(w.data)[k]);
            break;
          case WeightType::kInt8:
            wv = static_cast<double>(static_cast<const int8_t*>(w.data)[k]) * w.scales[o];
            break;
        }
        const float xv = x[r * w.cols + i];
        s += wv * (w.type == WeightType::kBF16 ? simd::ToFloat(simd::RoundToBf16(xv)) : xv);
      }
      if (w.bias != nullptr) s += w.bias[o];
      simd::Store(y, out, r * w.rows + o, static_cast<float>(s), residual);
    }
  }
}

namespace {

// VecMat's x as its kernels take it: rounded to bf16 for bf16 weights, times
// the row scales for int8 ones (w[i][c] = scales[i] q[i][c]).
const float* VecMatInput(const WeightMatrix& w, const float* x, int64_t n) {
  if (w.type == WeightType::kBF16) return RoundedThroughBf16(x, n * w.rows);
  if (w.type != WeightType::kInt8) return x;
  float* scaled = ThreadBuffer<float>(n * w.rows);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < w.rows; ++i) scaled[r * w.rows + i] = x[r * w.rows + i] * w.scales[i];
  return scaled;
}

}  // namespace

void VecMat(const WeightMatrix& w, const float* x, int64_t n, float* y) {
  const Dispatch& d = Chosen();
  (w.cols < kNarrowColumns ? d.narrow_vecmat : d.vecmat)(w, VecMatInput(w, x, n), n, y);
}

void VecMatReference(const WeightMatrix& w, const float* x, int64_t n, float* y) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < w.cols; ++c) {
      double s = y[r * w.cols + c];
      for (int64_t i = 0; i < w.rows; ++i) {
        const int64_t k = i * w.cols + c;
        double wv = 0;
        float xv = x[r * w.rows + i];
        switch (w.type) {
          case WeightType::kF32:
            wv = static_cast<const float*>(w.data)[k];
            break;
          case WeightType::kBF16:
            wv = simd::ToFloat(static_cast<const uint16_t*>(w.data)[k]);
            xv = simd::ToFloat(simd::RoundToBf16(xv));
            break;
          case WeightType::kInt8:
            wv = static_cast<double>(static_cast<const int8_t*>(w.data)[k]) * w.scales[i];
            break;
        }
        s += wv * xv;
      }
      y[r * w.cols + c] = static_cast<float>(s);
    }
  }
}

void VecMatOn(const std::string& isa, const WeightMatrix& w, const float* x, int64_t n, float* y) {
  const VecMatFn fn = isa.rfind("avx512", 0) == 0 ? VecMatAvx512
                      : isa == "avx2"             ? VecMatAvx2
                                                  : VecMatScalar;
  fn(w, VecMatInput(w, x, n), n, y);
}

std::string MatVecIsa() { return Chosen().name; }

std::vector<std::string> SupportedMatVecIsas() {
  std::vector<std::string> isas = {"scalar"};
  if (HasAvx2()) isas.push_back("avx2");
  if (HasAvx512()) isas.push_back("avx512");
  if (HasAvx512Bf16()) isas.push_back("avx512bf16");
  return isas;
}

void MatVecOn(const std::string& isa, const WeightMatrix& w, const float* x, int64_t n, void* y,
              OutputType out) {
  if (w.type == WeightType::kBF16 && isa == "avx512bf16") {
    MatVecRangeAvx512Bf16(w, RoundedToBf16(x, n * w.cols), n, y, out, nullptr, 0, w.rows);
    return;
  }
  if (w.type == WeightType::kBF16) x = RoundedThroughBf16(x, n * w.cols);
  const RangeFn fn = isa.rfind("avx512", 0) == 0 ? MatVecRangeAvx512
                     : isa == "avx2"             ? MatVecRangeAvx2
                                                 : MatVecRangeScalar;
  fn(w, x, n, y, out, nullptr, 0, w.rows);
}

void RmsNormRows(const void* x, OutputType type, int64_t n, int64_t d, const void* weight,
                 float eps, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    float sum = 0;
    for (int64_t i = 0; i < d; ++i) {
      const float v = simd::Load(x, type, r * d + i);
      sum += v * v;
    }
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) {
      const float normed = simd::Round(simd::Load(x, type, r * d + i) * inv, type);
      out[r * d + i] = simd::Round(simd::Load(weight, type, i) * normed, type);
    }
  }
}

namespace {

// One row of SwiGLU per activation type, in loops that vectorize (one clone per
// vector width, chosen at load time): the scalar std::exp took ~4% of a 0.5B
// bf16 decode step.
__attribute__((target_clones("avx512f", "avx2", "default"))) void SiluMulF32(const float* gate,
                                                                             const float* up,
                                                                             int64_t f,
                                                                             float* out) {
#pragma omp simd
  for (int64_t i = 0; i < f; ++i) out[i] = gate[i] / (1.0f + simd::Exp(-gate[i])) * up[i];
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void SiluMulBf16(const uint16_t* gate,
                                                                              const uint16_t* up,
                                                                              int64_t f,
                                                                              float* out) {
#pragma omp simd
  for (int64_t i = 0; i < f; ++i) {
    const float g = simd::ToFloat(gate[i]);
    const float silu = simd::RoundThroughBf16(g / (1.0f + simd::Exp(-g)));
    out[i] = simd::RoundThroughBf16(silu * simd::ToFloat(up[i]));
  }
}

}  // namespace

void SiluMulRows(const void* gate_up, OutputType type, int64_t n, int64_t f, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    if (type == OutputType::kF32) {
      const float* row = static_cast<const float*>(gate_up) + r * 2 * f;
      SiluMulF32(row, row + f, f, out + r * f);
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(gate_up) + r * 2 * f;
      SiluMulBf16(row, row + f, f, out + r * f);
    }
  }
}

void Bf16ToF32(const uint16_t* in, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = simd::ToFloat(in[i]);
}

uint16_t F32ToBf16(float value) { return simd::RoundToBf16(value); }

void DequantizeRowsInt8(const int8_t* q, const float* scales, int64_t rows, int64_t cols, void* out,
                        OutputType type, int threads) {
#pragma omp parallel for num_threads(std::max(threads, 1)) schedule(static)
  for (int64_t o = 0; o < rows; ++o) {
    for (int64_t i = 0; i < cols; ++i) {
      const float v = scales[o] * static_cast<float>(q[o * cols + i]);
      if (type == OutputType::kF32)
        static_cast<float*>(out)[o * cols + i] = v;
      else
        static_cast<uint16_t*>(out)[o * cols + i] = simd::RoundToBf16(v);
    }
  }
}

void QuantizeRowsInt8(const float* w, int64_t rows, int64_t cols, int8_t* q, float* scales) {
  for (int64_t o = 0; o < rows; ++o) {
    const float* row = w + o * cols;
    float peak = 0;
    for (int64_t i = 0; i < cols; ++i) peak = std::max(peak, std::fabs(row[i]));
    const float scale = peak > 0 ? peak / 127.0f : 1.0f;
    scales[o] = scale;
    for (int64_t i = 0; i < cols; ++i) {
      const float v = std::nearbyint(row[i] / scale);
      q[o * cols + i] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
    }
  }
}

}  // namespace kvguard::engine::cpu
