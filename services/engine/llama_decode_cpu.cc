// The CPU decode step as plain loops: one token per sequence through every
// layer with no libtorch op but the KV append. At batch 1 the libtorch path
// spends more time dispatching its ~35 small ops per layer than computing
// them on a tiny model (stories260K: ~270 us a step against llama2.c's ~90);
// here each layer is RMSNorm+QKV, RoPE, attention over the cache in place,
// O+residual, RMSNorm+gate/up, SwiGLU+down+residual, into buffers reused
// across steps.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "common/check.h"
#include "services/engine/cpu_attention.h"
#include "services/engine/llama_model_impl.h"

namespace kvguard::engine {
namespace {

cpu::OutputType ActivationType(at::ScalarType t) {
  return t == at::kFloat ? cpu::OutputType::kF32 : cpu::OutputType::kBF16;
}

// A decode step's activations, reused across steps (one set per thread).
struct DecodeBuffers {
  std::vector<char> x, x1, qkv, gate_up;  // activation dtype
  std::vector<float> in32, attn32, head32;
  std::vector<KvSpan> spans;

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
    return b;
  }
  template <class T>
  static void Fit(std::vector<T>& v, int64_t count) {
    if (static_cast<int64_t>(v.size()) < count) v.resize(static_cast<size_t>(count));
  }
};

}  // namespace

bool LlamaModel::Impl::CanDecodeOnCpu(std::span<const ForwardItem> batch) const {
  if (!fused_cpu_decode || !device.is_cpu() || (dtype != at::kFloat && dtype != at::kBFloat16) ||
      !embed.is_contiguous() || embed.scalar_type() != dtype) {
    return false;
  }
  const auto rows = static_cast<int64_t>(batch.size());
  if (rows > lm_head.matvec_rows) return false;
  for (const LayerWeights& w : layers) {
    for (const Linear* linear : {&w.qkv, &w.o, &w.gate_up, &w.down})
      if (rows > linear->matvec_rows) return false;
  }
  for (const ForwardItem& item : batch) {
    const SequenceKvCache& cache = *item.cache;
    if (item.tokens.size() != 1 || cache.options().needs.any() || cache.options().dtype != dtype)
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
  const int64_t rows = static_cast<int64_t>(batch.size()), d = c.hidden_size, hd = c.head_dim;
  const int64_t hq = c.num_heads, hkv = c.num_kv_heads, f = c.intermediate_size;
  const int64_t qkv_cols = (hq + 2 * hkv) * hd;
  const auto element = static_cast<int64_t>(at::elementSize(dtype));
  const int threads = at::get_num_threads();
  DecodeBuffers& b = DecodeBuffers::For(rows, c, element);
  const cpu::AttentionShape shape{.heads = hq, .kv_heads = hkv, .head_dim = hd};
  const auto kv_options = at::TensorOptions().dtype(dtype);

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
    cpu::MatVec(w.qkv.matvec, b.in32.data(), rows, b.qkv.data(), type, threads);
    for (size_t r = 0; r < batch.size(); ++r) {
      char* q = b.qkv.data() + r * qkv_cols * element;
      char* k = q + hq * hd * element;
      char* v = k + hkv * hd * element;
      if (c.qk_norm) {  // per-head RMSNorm before RoPE (qwen3)
        for (auto [heads, x, norm] : {std::tuple{hq, q, &w.q_norm}, {hkv, k, &w.k_norm}}) {
          cpu::RmsNormRows(x, type, heads, hd, norm->data_ptr(), eps, b.head32.data());
          for (int64_t i = 0; i < heads * hd; ++i) {
            if (type == cpu::OutputType::kF32)
              reinterpret_cast<float*>(x)[i] = b.head32[i];
            else
              reinterpret_cast<uint16_t*>(x)[i] = cpu::F32ToBf16(b.head32[i]);
          }
        }
      }
      const int64_t row = positions[r] * hd * element;
      const char* cos = static_cast<const char*>(rope_cos.data_ptr()) + row;
      const char* sin = static_cast<const char*>(rope_sin.data_ptr()) + row;
      cpu::RopeHeads(q, type, hq, hd, cos, sin);
      cpu::RopeHeads(k, type, hkv, hd, cos, sin);
      SequenceKvCache& cache = *batch[r].cache;
      cache.Append(l, at::from_blob(k, {hkv, 1, hd}, kv_options),
                   at::from_blob(v, {hkv, 1, hd}, kv_options), positions[r]);
      b.spans.clear();
      KVG_CHECK(cache.AttentionSpans(l, b.spans)) << "layer " << l << " cannot be read in place";
      cpu::DecodeAttention(q, type, shape, b.spans, b.attn32.data() + r * hq * hd, threads);
    }
    // x1 = x + o(attn); x = x1 + down(silu(gate) * up) with gate|up = gate_up(norm(x1)).
    cpu::MatVec(w.o.matvec, b.attn32.data(), rows, b.x1.data(), type, threads, b.x.data());
    cpu::RmsNormRows(b.x1.data(), type, rows, d, w.post_norm.data_ptr(), eps, b.in32.data());
    cpu::MatVec(w.gate_up.matvec, b.in32.data(), rows, b.gate_up.data(), type, threads);
    cpu::SiluMulRows(b.gate_up.data(), type, rows, f, b.in32.data());
    cpu::MatVec(w.down.matvec, b.in32.data(), rows, b.x.data(), type, threads, b.x1.data());
  }
  cpu::RmsNormRows(b.x.data(), type, rows, d, final_norm.data_ptr(), eps, b.in32.data());
  at::Tensor logits = at::empty({rows, lm_head.matvec.rows}, at::kFloat);
  cpu::MatVec(lm_head.matvec, b.in32.data(), rows, logits.data_ptr(), cpu::OutputType::kF32,
              threads);
  return logits;
}

}  // namespace kvguard::engine
