#include "services/engine/cpu_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
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
  thread_local std::vector<float> buffers[4];
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

// Query heads [g * group, (g + 1) * group) against kv head g.
void AttendKvHead(const void* q, OutputType type, const AttentionShape& shape,
                  std::span<const KvSpan> spans, int64_t total, int64_t g, float* out) {
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
        float* row = scores + (r0 + r) * total + column;
        for (int64_t s = 0; s < span.slots; ++s)
          row[s] = Round(Round(part[r * span.slots + s], type) * scale, type);
      }
    }
    column += span.slots;
  }

  // Softmax in f32 (as softmax(..., kFloat)), probabilities rounded to `type`.
  for (int64_t r = 0; r < group; ++r) {
    float* row = scores + r * total;
    float peak = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < total; ++t) peak = std::max(peak, row[t]);
    float sum = 0;
    for (int64_t t = 0; t < total; ++t) {
      row[t] = std::exp(row[t] - peak);
      sum += row[t];
    }
    const float inv = 1.0f / sum;
    for (int64_t t = 0; t < total; ++t) row[t] = Round(row[t] * inv, type);
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
                     std::span<const KvSpan> spans, float* out, int threads) {
  int64_t total = 0;
  for (const KvSpan& span : spans) total += span.slots;
  const int64_t work = total * shape.heads * shape.head_dim;
  const int team = static_cast<int>(
      std::min<int64_t>(std::max(threads, 1), work < kParallelElements ? 1 : shape.kv_heads));
  if (team <= 1) {
    for (int64_t g = 0; g < shape.kv_heads; ++g) AttendKvHead(q, type, shape, spans, total, g, out);
    return;
  }
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t g = 0; g < shape.kv_heads; ++g) AttendKvHead(q, type, shape, spans, total, g, out);
}

}  // namespace kvguard::engine::cpu
