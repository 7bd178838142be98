// The CPU decode step as plain loops: one token per sequence through every
// layer with no libtorch op but the KV append. At batch 1 the libtorch path
// spends more time dispatching its ~35 small ops per layer than computing
// them on a tiny model (stories260K: ~270 us a step against llama2.c's ~90);
// here each layer is RMSNorm+QKV, RoPE, attention over the cache in place,
// O+residual, RMSNorm+gate/up, SwiGLU+down+residual, into buffers reused
// across steps.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "services/engine/cpu_attention.h"
#include "services/engine/llama_model_impl.h"

namespace kvguard::engine {
// A decode step's activations, reused across steps (one set per thread).
struct DecodeBuffers {
  std::vector<char> x, x1, qkv, gate_up;  // activation dtype
  std::vector<float> in32, attn32, head32;
  std::vector<std::vector<KvSpan>> spans;  // per row

  static DecodeBuffers& For(int64_t rows, const ModelConfig& c, int64_t element_bytes) {
    thread_local DecodeBuffers b;
    const int64_t q = c.num_heads * c.head_dim, qkv = q + 2 * c.num_kv_heads * c.head_dim;
    const int64_t f = c.intermediate_size, d = c.hidden_size;
    Fit(b.x, rows * d * element_bytes);
    Fit(b.x1, rows * d * element_bytes);
    Fit(b.qkv, rows * qkv * element_bytes);
    Fit(b.gate_up, rows * 2 * f * element_bytes);
    Fit(b.in32, rows * std::max({d, f, q}));
    Fit(b.attn32, rows * q);
    Fit(b.head32, q);
    if (static_cast<int64_t>(b.spans.size()) < rows) {
      b.spans.resize(static_cast<size_t>(rows));
    }
    return b;
  }
  template <class T>
  static void Fit(std::vector<T>& v, int64_t count) {
    if (static_cast<int64_t>(v.size()) < count) v.resize(static_cast<size_t>(count));
  }
};

namespace {

cpu::OutputType ActivationType(at::ScalarType t) {
  return t == at::kFloat ? cpu::OutputType::kF32 : cpu::OutputType::kBF16;
}

// y = x W^T for any number of rows: MatVec takes kMaxMatVecRows at a time, so
// larger batches stream small weights several times (from cache, for the
// models whose matvec_rows allow it).
void MatVecRows(const cpu::WeightMatrix& w, const float* x, int64_t rows, void* y,
                cpu::OutputType type, int threads, const void* residual = nullptr) {
  const int64_t y_row = w.rows * (type == cpu::OutputType::kF32 ? 4 : 2);
  for (int64_t r0 = 0; r0 < rows; r0 += cpu::kMaxMatVecRows) {
    const int64_t n = std::min(cpu::kMaxMatVecRows, rows - r0);
    cpu::MatVec(w, x + r0 * w.cols, n, static_cast<char*>(y) + r0 * y_row, type, threads,
                residual == nullptr ? nullptr : static_cast<const char*>(residual) + r0 * y_row);
  }
}

// The last `query_window` post-RoPE queries (SnapKV, TOVA): a full window
// shifts in place, so a decode step allocates nothing.
void RecordRecentQuery(SequenceKvCache& cache, int64_t layer, const char* q, int64_t heads,
                       int64_t head_dim, at::ScalarType dtype, int64_t position) {
  const int64_t window = cache.options().needs.query_window;
  LayerAttentionStats& st = cache.MutableAttentionStats(layer);
  const int64_t row = head_dim * static_cast<int64_t>(at::elementSize(dtype));
  if (st.recent_queries.defined() && st.recent_queries.size(1) == window &&
      st.recent_queries.is_contiguous() && st.recent_queries.scalar_type() == dtype) {
    char* base = static_cast<char*>(st.recent_queries.data_ptr());
    for (int64_t h = 0; h < heads; ++h) {
      char* head = base + h * window * row;
      std::memmove(head, head + row, (window - 1) * row);
      std::memcpy(head + (window - 1) * row, q + h * row, row);
    }
    st.recent_positions.erase(st.recent_positions.begin());
  } else {
    at::Tensor now = at::from_blob(const_cast<char*>(q), {heads, 1, head_dim}, dtype).clone();
    at::Tensor all = st.recent_queries.defined() ? at::cat({st.recent_queries, now}, 1) : now;
    const int64_t keep = std::min(window, all.size(1));
    st.recent_queries = all.narrow(1, all.size(1) - keep, keep).contiguous();
    const auto drop = static_cast<int64_t>(st.recent_positions.size()) + 1 - keep;
    st.recent_positions.erase(st.recent_positions.begin(), st.recent_positions.begin() + drop);
  }
  st.recent_positions.push_back(static_cast<int32_t>(position));
}

// H2O-style statistics of one decode step: the softmax adds each head's
// probabilities straight into the cache's [kv_heads, group, capacity] sums
// (cpu::DecodeAttention); this counts the step for every retained slot.
// Runs on the row's attention thread: rows own their caches.
void CountStepAttention(SequenceKvCache& cache, int64_t layer) {
  at::Tensor& count = cache.MutableAttentionStats(layer).attention_count;
  const int64_t hkv = count.size(0), capacity = count.size(1);
  const int64_t retained = cache.RetainedSlots(layer);
  KVG_CHECK(count.is_contiguous() && retained <= capacity);
  float* n = count.data_ptr<float>();
  for (int64_t g = 0; g < hkv; ++g) {
    float* seen = n + g * capacity;
    for (int64_t t = 0; t < retained; ++t) seen[t] += 1.0f;
  }
}

// The sums rows of one layer, as cpu::DecodeAttention adds into them.
float* StepAttentionSums(SequenceKvCache& cache, int64_t layer, int64_t heads, int64_t& stride) {
  at::Tensor& sum = cache.MutableAttentionStats(layer).attention_sum;  // allocated by GrowStats
  KVG_CHECK(sum.size(0) * sum.size(1) == heads && sum.scalar_type() == at::kFloat &&
            sum.is_contiguous() && cache.RetainedSlots(layer) <= sum.size(2));
  stride = sum.size(2);
  return sum.data_ptr<float>();
}

}  // namespace

void LlamaModel::Impl::AttendLayer(std::span<ForwardItem> batch, int64_t l,
                                   const std::vector<int64_t>& positions, DecodeBuffers& b) const {
  const LlamaModel::Impl& m = *this;
  const ModelConfig& c = m.config;
  const cpu::OutputType type = ActivationType(m.dtype);
  const int64_t hd = c.head_dim, hq = c.num_heads, hkv = c.num_kv_heads;
  const int64_t qkv_cols = (hq + 2 * hkv) * hd;
  const auto element = static_cast<int64_t>(at::elementSize(m.dtype));
  const auto kv_options = at::TensorOptions().dtype(m.dtype);
  const LayerWeights& w = m.layers[l];
  const auto rows = static_cast<int64_t>(batch.size());
  for (int64_t r = 0; r < rows; ++r) {
    char* q = b.qkv.data() + r * qkv_cols * element;
    char* k = q + hq * hd * element;
    char* v = k + hkv * hd * element;
    if (c.qk_norm) {  // per-head RMSNorm before RoPE (qwen3)
      for (auto [heads, x, norm] : {std::tuple{hq, q, &w.q_norm}, {hkv, k, &w.k_norm}}) {
        cpu::RmsNormRows(x, type, heads, hd, norm->data_ptr(), static_cast<float>(c.rms_norm_eps),
                         b.head32.data());
        for (int64_t i = 0; i < heads * hd; ++i) {
          if (type == cpu::OutputType::kF32)
            reinterpret_cast<float*>(x)[i] = b.head32[i];
          else
            reinterpret_cast<uint16_t*>(x)[i] = cpu::F32ToBf16(b.head32[i]);
        }
      }
    }
    const int64_t row = positions[r] * hd * element;
    const char* cos = static_cast<const char*>(m.rope_cos.data_ptr()) + row;
    const char* sin = static_cast<const char*>(m.rope_sin.data_ptr()) + row;
    cpu::RopeHeads(q, type, hq, hd, cos, sin);
    cpu::RopeHeads(k, type, hkv, hd, cos, sin);
    SequenceKvCache& cache = *batch[r].cache;
    const AttentionNeeds& needs = cache.options().needs;
    if (needs.query_window > 0) RecordRecentQuery(cache, l, q, hq, hd, m.dtype, positions[r]);
    cache.Append(l, at::from_blob(k, {hkv, 1, hd}, kv_options),
                 at::from_blob(v, {hkv, 1, hd}, kv_options), positions[r]);
    b.spans[r].clear();
    KVG_CHECK(cache.AttentionSpans(l, b.spans[r])) << "layer " << l << " cannot be read in place";
  }
  const int threads = at::get_num_threads();
  auto attend = [&](int64_t r, int team) {
    const char* q = b.qkv.data() + r * qkv_cols * element;
    SequenceKvCache& cache = *batch[r].cache;
    const bool sums = cache.options().needs.attention_sums;
    int64_t stride = 0;
    float* prob_sums = sums ? StepAttentionSums(cache, l, hq, stride) : nullptr;
    cpu::DecodeAttention(q, type, {.heads = hq, .kv_heads = hkv, .head_dim = hd}, b.spans[r],
                         b.attn32.data() + r * hq * hd, team, prob_sums, stride);
    if (sums) CountStepAttention(cache, l);
  };
  if (rows == 1 || threads <= 1) {
    for (int64_t r = 0; r < rows; ++r) attend(r, threads);
  } else {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; ++r) attend(r, 1);
  }
}

bool LlamaModel::Impl::CanDecodeOnCpu(std::span<const ForwardItem> batch) const {
  if (!fused_cpu_decode || !device.is_cpu() || (dtype != at::kFloat && dtype != at::kBFloat16) ||
      !embed.is_contiguous() || embed.scalar_type() != dtype) {
    return false;
  }
  // Batches above kMaxMatVecRows run in chunks where the weights allow MatVec
  // at its full width (f32, int8); bf16 batches are oneDNN GEMMs.
  const auto rows = static_cast<int64_t>(batch.size());
  auto fits = [rows](const Linear& l) {
    return rows <= l.matvec_rows || l.matvec_rows == cpu::kMaxMatVecRows;
  };
  if (!fits(lm_head)) return false;
  for (const LayerWeights& w : layers) {
    for (const Linear* linear : {&w.qkv, &w.o, &w.gate_up, &w.down})
      if (!fits(*linear)) return false;
  }
  for (const ForwardItem& item : batch) {
    const SequenceKvCache& cache = *item.cache;
    const AttentionNeeds& needs = cache.options().needs;
    // Recent queries and attention sums are kept here; query moments and
    // question spans only by the libtorch path.
    if (item.tokens.size() != 1 || needs.query_moments || needs.question_begin >= 0 ||
        cache.options().dtype != dtype)
      return false;
    for (int64_t l = 0; l < config.num_layers; ++l) {
      if (cache.quantized(l) || cache.ApproximatedSlots(l) > 0) return false;
    }
  }
  return true;
}

at::Tensor LlamaModel::Impl::DecodeOnCpu(std::span<ForwardItem> batch) const {
  const ModelConfig& c = config;
  const cpu::OutputType type = ActivationType(dtype);
  const auto eps = static_cast<float>(c.rms_norm_eps);
  const int64_t rows = static_cast<int64_t>(batch.size()), d = c.hidden_size;
  const int64_t f = c.intermediate_size;
  const auto element = static_cast<int64_t>(at::elementSize(dtype));
  const int threads = at::get_num_threads();
  DecodeBuffers& b = DecodeBuffers::For(rows, c, element);

  std::vector<int64_t> positions(batch.size());
  for (size_t r = 0; r < batch.size(); ++r) {
    positions[r] = batch[r].cache->num_positions();
    batch[r].cache->AppendTokenIds(batch[r].tokens);
    std::memcpy(b.x.data() + r * d * element,
                static_cast<const char*>(embed.data_ptr()) + batch[r].tokens[0] * d * element,
                d * element);
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = layers[l];
    cpu::RmsNormRows(b.x.data(), type, rows, d, w.input_norm.data_ptr(), eps, b.in32.data());
    MatVecRows(w.qkv.matvec, b.in32.data(), rows, b.qkv.data(), type, threads);
    AttendLayer(batch, l, positions, b);
    // x1 = x + o(attn); x = x1 + down(silu(gate) * up) with gate|up = gate_up(norm(x1)).
    MatVecRows(w.o.matvec, b.attn32.data(), rows, b.x1.data(), type, threads, b.x.data());
    cpu::RmsNormRows(b.x1.data(), type, rows, d, w.post_norm.data_ptr(), eps, b.in32.data());
    MatVecRows(w.gate_up.matvec, b.in32.data(), rows, b.gate_up.data(), type, threads);
    cpu::SiluMulRows(b.gate_up.data(), type, rows, f, b.in32.data());
    MatVecRows(w.down.matvec, b.in32.data(), rows, b.x.data(), type, threads, b.x1.data());
  }
  cpu::RmsNormRows(b.x.data(), type, rows, d, final_norm.data_ptr(), eps, b.in32.data());
  at::Tensor logits = at::empty({rows, lm_head.matvec.rows}, at::kFloat);
  MatVecRows(lm_head.matvec, b.in32.data(), rows, logits.data_ptr(), cpu::OutputType::kF32,
             threads);
  return logits;
}

}  // namespace kvguard::engine
