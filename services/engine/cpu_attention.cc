#include "services/engine/cpu_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "services/engine/cpu_matvec_simd.h"

namespace kvguard::engine::cpu {
namespace {

using simd::Load;
using simd::Round;

// Below this many cached key elements per step, one thread does all heads.
constexpr int64_t kParallelElements = int64_t{1} << 16;

float* ThreadFloats(int index, int64_t count) {
  thread_local std::vector<float> buffers[5];
  std::vector<float>& b = buffers[index];
  if (static_cast<int64_t>(b.size()) < count) b.resize(static_cast<size_t>(count));
  return b.data();
}

int64_t ElementBytes(OutputType type) { return type == OutputType::kF32 ? 4 : 2; }

// Head h's [slots, head_dim] block of a span's keys or values.
WeightMatrix HeadRows(const void* base, OutputType type, const KvSpan& span, int64_t h,
                      int64_t head_dim) {
  const auto* bytes = static_cast<const char*>(base);
  return {.type = type == OutputType::kF32 ? WeightType::kF32 : WeightType::kBF16,
          .data = bytes + h * span.head_stride * head_dim * ElementBytes(type),
          .rows = span.slots,
          .cols = head_dim};
}

// row[t] = exp(row[t] - peak) for t < count; returns their sum. One clone per
// vector width, chosen at load time (ifunc), as the MatVec kernels are.
__attribute__((target_clones("avx512f", "avx2", "default"))) float ExpShifted(float* row,
                                                                              int64_t count,
                                                                              float peak) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < count; ++t) {
    row[t] = simd::Exp(row[t] - peak);
    sum += row[t];
  }
  return sum;
}

// The peak of row[0, count), for the softmax's shift.
__attribute__((target_clones("avx512f", "avx2", "default"))) float Peak(const float* row,
                                                                        int64_t count) {
  float peak = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : peak)
  for (int64_t t = 0; t < count; ++t) peak = row[t] > peak ? row[t] : peak;
  return peak;
}

// out[s] = round(round(dot[s]) * scale) in the activation type: the bmm's rounding, then mul_'s.
__attribute__((target_clones("avx512f", "avx2", "default"))) void ScaleScores(
    const float* dot, int64_t count, float scale, bool bf16, float* out) {
  if (bf16) {
#pragma omp simd
    for (int64_t s = 0; s < count; ++s)
      out[s] = simd::RoundThroughBf16(simd::RoundThroughBf16(dot[s]) * scale);
  } else {
#pragma omp simd
    for (int64_t s = 0; s < count; ++s) out[s] = dot[s] * scale;
  }
}

// row[t] = round(row[t] * inv) in the activation type; `sums` (optional) gets the unrounded
// probabilities added, in the same pass.
__attribute__((target_clones("avx512f", "avx2", "default"))) void Normalise(float* row,
                                                                            int64_t count,
                                                                            float inv, bool bf16,
                                                                            float* sums) {
  if (sums != nullptr && bf16) {
#pragma omp simd
    for (int64_t t = 0; t < count; ++t) {
      const float p = row[t] * inv;
      sums[t] += p;
      row[t] = simd::RoundThroughBf16(p);
    }
  } else if (sums != nullptr) {
#pragma omp simd
    for (int64_t t = 0; t < count; ++t) {
      row[t] *= inv;
      sums[t] += row[t];
    }
  } else if (bf16) {
#pragma omp simd
    for (int64_t t = 0; t < count; ++t) row[t] = simd::RoundThroughBf16(row[t] * inv);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < count; ++t) row[t] *= inv;
  }
}

// Query heads [g * group, (g + 1) * group) against kv head g.
void AttendKvHead(const void* q, OutputType type, const AttentionShape& shape,
                  std::span<const KvSpan> spans, int64_t total, int64_t g, float* out,
                  float* prob_sums, int64_t sums_stride) {
  const int64_t hd = shape.head_dim, group = shape.heads / shape.kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  float* qf = ThreadFloats(0, group * hd);
  for (int64_t i = 0; i < group * hd; ++i) qf[i] = Load(q, type, g * group * hd + i);

  // scores[r][t] = round(round(q_r . k_t) * scale): the bmm's rounding, then mul_'s.
  float* scores = ThreadFloats(1, group * total);
  float* part = ThreadFloats(2, std::min(group, kMaxMatVecRows) * total);
  int64_t column = 0;
  for (const KvSpan& span : spans) {
    const WeightMatrix keys = HeadRows(span.keys, type, span, g, hd);
    for (int64_t r0 = 0; r0 < group; r0 += kMaxMatVecRows) {
      const int64_t n = std::min(kMaxMatVecRows, group - r0);
      MatVec(keys, qf + r0 * hd, n, part, OutputType::kF32, 1);
      for (int64_t r = 0; r < n; ++r) {
        ScaleScores(part + r * span.slots, span.slots, scale, type == OutputType::kBF16,
                    scores + (r0 + r) * total + column);
      }
    }
    column += span.slots;
  }

  // Softmax in f32 (as softmax(..., kFloat)), probabilities rounded to `type`.
  for (int64_t r = 0; r < group; ++r) {
    float* row = scores + r * total;
    const float sum = ExpShifted(row, total, Peak(row, total));
    Normalise(row, total, 1.0f / sum, type == OutputType::kBF16,
              prob_sums == nullptr ? nullptr : prob_sums + (g * group + r) * sums_stride);
  }

  // out_r = sum_t p[r][t] v_t, accumulated in f32 over the spans, then rounded.
  float* acc = out + g * group * hd;
  std::fill(acc, acc + group * hd, 0.0f);
  column = 0;
  for (const KvSpan& span : spans) {
    const WeightMatrix values = HeadRows(span.values, type, span, g, hd);
    const float* p = scores + column;
    if (spans.size() > 1) {  // VecMat takes rows of exactly span.slots probabilities
      float* packed = ThreadFloats(3, group * span.slots);
      for (int64_t r = 0; r < group; ++r)
        std::copy_n(scores + r * total + column, span.slots, packed + r * span.slots);
      p = packed;
    }
    VecMat(values, p, group, acc);
    column += span.slots;
  }
  for (int64_t i = 0; i < group * hd; ++i) acc[i] = Round(acc[i], type);
}

// Queries [i0, i1) of a prefill of n new tokens (the last n of `total` entries)
// against kv head g; query i sees entries [0, total - n + i]. Rounds as
// AttendKvHead does; `prob_sums` ([heads, total], optional) gets each query's
// unrounded probabilities added, as the libtorch path's f32 softmax output.
void AttendPrefillBlock(const void* q, OutputType type, const AttentionShape& shape,
                        std::span<const KvSpan> spans, int64_t total, int64_t n, int64_t g,
                        int64_t i0, int64_t i1, float* out, float* prob_sums) {
  const int64_t hd = shape.head_dim, group = shape.heads / shape.kv_heads;
  const int64_t rows = (i1 - i0) * group, visible = total - n + i1;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  // Row (i - i0) * group + r is query i, head g * group + r.
  float* qf = ThreadFloats(0, rows * hd);
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t j = 0; j < group * hd; ++j)
      qf[(i - i0) * group * hd + j] = Load(q, type, (i * shape.heads + g * group) * hd + j);
  }
  // scores = Q K^T through VecMat over the keys transposed to [head_dim,
  // visible] f32: broadcast FMAs over 16 slots at a time, where MatVec on
  // head_dim-long key rows would spend its time in horizontal sums.
  float* scores = ThreadFloats(1, rows * visible);
  float* kt = ThreadFloats(2, hd * visible);
  int64_t column = 0;
  for (const KvSpan& span : spans) {
    if (column >= visible) break;
    const int64_t slots = std::min(span.slots, visible - column);
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t base = (g * span.head_stride + s) * hd;
      for (int64_t j = 0; j < hd; ++j)
        kt[j * visible + column + s] = Load(span.keys, type, base + j);
    }
    column += slots;
  }
  std::fill(scores, scores + rows * visible, 0.0f);
  VecMat({.type = WeightType::kF32, .data = kt, .rows = hd, .cols = visible}, qf, rows, scores);
  const bool bf16 = type == OutputType::kBF16;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r / group, sees = total - n + i + 1;
    float* row = scores + r * visible;
    ScaleScores(row, sees, scale, bf16, row);
    const float inv = 1.0f / ExpShifted(row, sees, Peak(row, sees));
    Normalise(row, sees, inv, bf16,
              prob_sums == nullptr ? nullptr : prob_sums + (g * group + r % group) * total);
    std::fill(row + sees, row + visible, 0.0f);  // causal: later entries get no weight
  }
  float* acc = ThreadFloats(3, rows * hd);
  std::fill(acc, acc + rows * hd, 0.0f);
  float* packed = ThreadFloats(4, rows * visible);
  column = 0;
  for (const KvSpan& span : spans) {
    if (column >= visible) break;
    KvSpan seen = span;
    seen.slots = std::min(span.slots, visible - column);
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(scores + r * visible + column, seen.slots, packed + r * seen.slots);
    VecMat(HeadRows(span.values, type, seen, g, hd), packed, rows, acc);
    column += seen.slots;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r / group, h = g * group + r % group;
    for (int64_t j = 0; j < hd; ++j)
      out[(i * shape.heads + h) * hd + j] = Round(acc[r * hd + j], type);
  }
}

}  // namespace

void RopeHeads(void* x, OutputType type, int64_t heads, int64_t head_dim, const void* cos,
               const void* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t base = h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = Load(x, type, base + i), x2 = Load(x, type, base + half + i);
      const float lo = Round(x1 * Load(cos, type, i), type) + Round(-x2 * Load(sin, type, i), type);
      const float hi =
          Round(x2 * Load(cos, type, half + i), type) + Round(x1 * Load(sin, type, half + i), type);
      simd::Store(x, type, base + i, lo, nullptr);
      simd::Store(x, type, base + half + i, hi, nullptr);
    }
  }
}

void DecodeAttention(const void* q, OutputType type, const AttentionShape& shape,
                     std::span<const KvSpan> spans, float* out, int threads, float* prob_sums,
                     int64_t sums_stride) {
  int64_t total = 0;
  for (const KvSpan& span : spans) total += span.slots;
  const int64_t work = total * shape.heads * shape.head_dim;
  const int team = static_cast<int>(
      std::min<int64_t>(std::max(threads, 1), work < kParallelElements ? 1 : shape.kv_heads));
  if (team <= 1) {
    for (int64_t g = 0; g < shape.kv_heads; ++g)
      AttendKvHead(q, type, shape, spans, total, g, out, prob_sums, sums_stride);
    return;
  }
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t g = 0; g < shape.kv_heads; ++g)
    AttendKvHead(q, type, shape, spans, total, g, out, prob_sums, sums_stride);
}

void PrefillAttention(const void* q, OutputType type, const AttentionShape& shape,
                      std::span<const KvSpan> spans, int64_t n, float* out, float* prob_sums,
                      int threads) {
  int64_t total = 0;
  for (const KvSpan& span : spans) total += span.slots;
  // Blocks of queries small enough that their scores stay in cache; with
  // prob_sums a kv head's blocks run on one thread (they add to the same rows).
  const int64_t group = shape.heads / shape.kv_heads;
  const int64_t block = std::max<int64_t>(1, 64 / group);
  const int64_t blocks = prob_sums != nullptr ? 1 : (n + block - 1) / block;
  const int64_t tasks = shape.kv_heads * blocks;
  auto run = [&](int64_t task) {
    const int64_t g = task / blocks, b = task % blocks;
    const int64_t first = b * block, last = blocks == 1 ? n : std::min(n, first + block);
    for (int64_t i0 = first; i0 < last; i0 += block)
      AttendPrefillBlock(q, type, shape, spans, total, n, g, i0, std::min(last, i0 + block), out,
                         prob_sums);
  };
  const int team = static_cast<int>(std::min<int64_t>(std::max(threads, 1), tasks));
  if (team <= 1) {
    for (int64_t t = 0; t < tasks; ++t) run(t);
    return;
  }
#pragma omp parallel for num_threads(team) schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) run(t);
}

}  // namespace kvguard::engine::cpu
