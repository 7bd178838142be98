#include "services/engine/llama_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "services/engine/cpu_attention.h"
#include "services/engine/cpu_matvec.h"
#include "services/engine/huge_pages.h"
#include "services/engine/llama_model_impl.h"

namespace kvguard::engine {
namespace {

absl::StatusOr<WeightFormat> ParseWeightFormat(const std::string& name) {
  if (name == "native") return WeightFormat::kNative;
  if (name == "int8") return WeightFormat::kInt8;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown weight format '", name, "' (expected native or int8)"));
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& name) {
  if (name == "f32" || name == "float32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "f16" || name == "float16") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "' (expected f32, bf16 or f16)"));
}

}  // namespace

std::string ResolveDtype(const Checkpoint& checkpoint, const std::string& device,
                         const std::string& dtype) {
  if (dtype != "auto") return dtype;
  const TensorView* embed =
      checkpoint.weights ? checkpoint.weights->Find("model.embed_tokens.weight") : nullptr;
  if (embed == nullptr) return "f32";
  if (embed->dtype == DType::kBF16) return "bf16";
  if (embed->dtype == DType::kF16) return device.rfind("cuda", 0) == 0 ? "f16" : "f32";
  return "f32";
}

std::string DtypeName(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "f32";
    case at::kBFloat16:
      return "bf16";
    case at::kHalf:
      return "f16";
    default:
      return c10::toString(dtype);
  }
}

namespace {

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          "device 'cuda' requested but this libtorch build has no CUDA device available");
    }
    try {
      return at::Device(name);
    } catch (const std::exception&) {
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", name, "' (cpu, cuda[:N])"));
}

absl::StatusOr<at::ScalarType> ToScalarType(DType dtype, const std::string& name) {
  switch (dtype) {
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kF64:
      return at::kDouble;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has non-float dtype ", DTypeName(dtype)));
  }
}

// llama2.c rotates interleaved pairs; HF rotates halves. Permuting the rows of
// wq/wk per head turns one into the other (q·k is unchanged), as HF's
// conversion script does.
at::Tensor InterleavedToHalves(const at::Tensor& w, int64_t heads, int64_t head_dim) {
  const int64_t in = w.size(1);
  return w.view({heads, head_dim / 2, 2, in}).transpose(1, 2).reshape({heads * head_dim, in});
}

at::Tensor InverseFrequencies(const RopeConfig& rope, int64_t head_dim) {
  at::Tensor exponent = at::arange(0, head_dim, 2, at::kDouble) / static_cast<double>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(rope.theta, exponent);
  if (rope.scaling == RopeScaling::kLinear) return inv_freq / rope.factor;
  if (rope.scaling != RopeScaling::kLlama3) return inv_freq;
  // Llama 3.1: scale low frequencies by 1/factor, keep high ones, blend between.
  const double old_len = static_cast<double>(rope.original_max_position);
  const double low_wavelen = old_len / rope.low_freq_factor;
  const double high_wavelen = old_len / rope.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq);
  at::Tensor smooth =
      (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return at::where(medium, smoothed, scaled);
}

}  // namespace

// Copies checkpoint weights to owned tensors of the compute dtype and device,
// checking every shape against the config.
class WeightLoader {
 public:
  WeightLoader(const WeightSource& source, at::ScalarType dtype, at::Device device)
      : source_(source), options_(at::TensorOptions().dtype(dtype).device(device)) {}

  absl::StatusOr<at::Tensor> Get(const std::string& name, std::vector<int64_t> shape) {
    const TensorView* view = source_.Find(name);
    if (view == nullptr) return absl::NotFoundError(absl::StrCat("missing weight '", name, "'"));
    if (view->shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight '", name, "' has shape [", absl::StrJoin(view->shape, ","),
                       "], config implies [", absl::StrJoin(shape, ","), "]"));
    }
    KVG_ASSIGN_OR_RETURN(at::ScalarType src, ToScalarType(view->dtype, name));
    // from_blob borrows the read-only mapping; the owned copy is made once, on
    // CPU straight into huge-page memory (huge_pages.h: MatVec streams the
    // large matrices every token).
    at::Tensor borrowed =
        at::from_blob(const_cast<uint8_t*>(view->data), shape, at::TensorOptions().dtype(src));
    if (!options_.device().is_cpu())
      return borrowed.to(options_, /*non_blocking=*/false, /*copy=*/true);
    at::Tensor owned = EmptyOnHugePages(shape, options_);
    owned.copy_(borrowed);
    return owned;
  }
  bool Has(const std::string& name) const { return source_.Find(name) != nullptr; }

 private:
  const WeightSource& source_;
  at::TensorOptions options_;
};

Linear LlamaModel::Impl::MakeLinear(at::Tensor weight, at::Tensor bias) const {
  Linear linear;
  linear.bias = bias;
  const bool cpu = device.is_cpu();
  if (cpu && bias.defined()) linear.bias_f32 = bias.to(at::kFloat).contiguous();
  linear.matvec = {.bias = cpu && bias.defined() ? linear.bias_f32.data_ptr<float>() : nullptr,
                   .rows = weight.size(0),
                   .cols = weight.size(1)};
  if (weights == WeightFormat::kInt8) {
    at::Tensor w32 = weight.to(at::kFloat).contiguous();
    linear.q8 = EmptyOnHugePages(w32.sizes(), at::kChar);
    linear.scales = at::empty({w32.size(0)}, at::kFloat);
    cpu::QuantizeRowsInt8(w32.data_ptr<float>(), w32.size(0), w32.size(1),
                          linear.q8.data_ptr<int8_t>(), linear.scales.data_ptr<float>());
    linear.matvec.type = cpu::WeightType::kInt8;
    linear.matvec.data = linear.q8.data_ptr();
    linear.matvec.scales = linear.scales.data_ptr<float>();
    linear.matvec_rows = cpu::kMaxMatVecRows;  // a GEMM would first dequantize the matrix
    return linear;
  }
  linear.weight = weight;
  if (cpu && (dtype == at::kFloat || dtype == at::kBFloat16)) {
    linear.matvec.type = dtype == at::kFloat ? cpu::WeightType::kF32 : cpu::WeightType::kBF16;
    linear.matvec.data = weight.data_ptr();
    // bf16: oneDNN's GEMM matches MatVec from 2 rows up and wins from 8
    // (reports/bench/engine.md); f32: MatVec up to 16 rows, no slower than sgemm, and any number
    // of rows (a prefill, in 16-row chunks across threads) for matrices that stay in L2, where
    // its short-row kernel beats sgemm: the test-bed model's 750-token prefill went from 12.4k to
    // 18.6k tokens/s.
    constexpr int64_t kCachedMatrixBytes = int64_t{1} << 20;
    const bool cached = weight.numel() * 4 <= kCachedMatrixBytes;
    linear.matvec_rows = dtype != at::kFloat ? 1
                         : cached            ? std::numeric_limits<int64_t>::max()
                                             : cpu::kMaxMatVecRows;
  }
  return linear;
}

namespace {

cpu::OutputType RowType(at::ScalarType t) {
  return t == at::kFloat ? cpu::OutputType::kF32 : cpu::OutputType::kBF16;
}

// MatVec's f32 input rows; one buffer per thread (a forward runs on one thread).
float* Scratch(int64_t count) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(count);
  return buffer.data();
}

}  // namespace

bool LlamaModel::Impl::Fusable(const Linear& linear, const at::Tensor& x) const {
  return x.size(0) <= linear.matvec_rows && x.is_contiguous() &&
         (dtype == at::kFloat || dtype == at::kBFloat16) && x.scalar_type() == dtype;
}

at::Tensor LlamaModel::Impl::RunMatVec(const Linear& linear, const float* x32, int64_t rows,
                                       at::ScalarType out, const at::Tensor& residual) const {
  at::Tensor y = at::empty({rows, linear.matvec.rows}, at::TensorOptions().dtype(out));
  if (rows <= cpu::kMaxMatVecRows) {
    cpu::MatVec(linear.matvec, x32, rows, y.data_ptr(), RowType(out), at::get_num_threads(),
                residual.defined() ? residual.data_ptr() : nullptr);
    return y;
  }
  // More rows than one MatVec takes (a prefill): chunks of rows spread over the threads.
  const int64_t row_bytes = linear.matvec.rows * static_cast<int64_t>(at::elementSize(out));
  const int64_t chunks = (rows + cpu::kMaxMatVecRows - 1) / cpu::kMaxMatVecRows;
  char* y_rows = static_cast<char*>(y.data_ptr());
  const char* residual_rows =
      residual.defined() ? static_cast<const char*>(residual.data_ptr()) : nullptr;
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = c * cpu::kMaxMatVecRows, n = std::min(cpu::kMaxMatVecRows, rows - r0);
    cpu::MatVec(linear.matvec, x32 + r0 * linear.matvec.cols, n, y_rows + r0 * row_bytes,
                RowType(out), 1,
                residual_rows == nullptr ? nullptr : residual_rows + r0 * row_bytes);
  }
  return y;
}

at::Tensor LlamaModel::Impl::NormThenApply(const Linear& linear, const at::Tensor& x,
                                           const at::Tensor& norm) const {
  if (!Fusable(linear, x)) return Apply(linear, RmsNorm(x, norm));
  const int64_t rows = x.size(0), d = x.size(1);
  float* x32 = Scratch(rows * d);
  cpu::RmsNormRows(x.data_ptr(), RowType(dtype), rows, d, norm.data_ptr(),
                   static_cast<float>(config.rms_norm_eps), x32);
  return RunMatVec(linear, x32, rows, dtype);
}

at::Tensor LlamaModel::Impl::ApplyAdd(const Linear& linear, const at::Tensor& a,
                                      const at::Tensor& residual) const {
  if (!Fusable(linear, a) || !residual.is_contiguous()) return residual + Apply(linear, a);
  const int64_t rows = a.size(0), cols = a.size(1);
  float* x32 = Scratch(rows * cols);
  if (dtype == at::kFloat)
    std::copy_n(a.data_ptr<float>(), rows * cols, x32);
  else
    cpu::Bf16ToF32(reinterpret_cast<const uint16_t*>(a.data_ptr()), x32, rows * cols);
  return RunMatVec(linear, x32, rows, dtype, residual);
}

at::Tensor LlamaModel::Impl::SwiGluApplyAdd(const Linear& down, const at::Tensor& gate_up,
                                            const at::Tensor& residual) const {
  const int64_t f = config.intermediate_size;
  if (!Fusable(down, gate_up) || !residual.is_contiguous()) {
    return residual + Apply(down, at::silu(gate_up.narrow(1, 0, f)) * gate_up.narrow(1, f, f));
  }
  const int64_t rows = gate_up.size(0);
  float* x32 = Scratch(rows * f);
  cpu::SiluMulRows(gate_up.data_ptr(), RowType(dtype), rows, f, x32);
  return RunMatVec(down, x32, rows, dtype, residual);
}

at::Tensor LlamaModel::Impl::Apply(const Linear& linear, const at::Tensor& x,
                                   at::ScalarType out) const {
  if (out == at::ScalarType::Undefined) out = dtype;
  const int64_t rows = x.size(0);
  if (rows <= linear.matvec_rows && (out == at::kFloat || out == at::kBFloat16)) {
    at::Tensor x32 = x.to(at::kFloat).contiguous();
    return RunMatVec(linear, x32.data_ptr<float>(), rows, out);
  }
  if (linear.q8.defined()) {
    // Prefill with int8 weights: dequantize this matrix for one GEMM.
    at::Tensor w = at::empty(linear.q8.sizes(), at::TensorOptions().dtype(dtype));
    cpu::DequantizeRowsInt8(linear.q8.data_ptr<int8_t>(), linear.scales.data_ptr<float>(),
                            w.size(0), w.size(1), w.data_ptr(), RowType(dtype),
                            at::get_num_threads());
    return at::linear(x, w, linear.bias).to(out);
  }
  return at::linear(x, linear.weight, linear.bias).to(out);
}

absl::Status LlamaModel::Impl::LoadLayer(WeightLoader& loader, int64_t l, LayerWeights& w) {
  const ModelConfig& c = config;
  const int64_t d = c.hidden_size, hd = c.head_dim, f = c.intermediate_size;
  const int64_t q_rows = c.num_heads * hd, kv_rows = c.num_kv_heads * hd;
  const std::string p = absl::StrCat("model.layers.", l, ".");
  KVG_ASSIGN_OR_RETURN(w.input_norm, loader.Get(p + "input_layernorm.weight", {d}));
  KVG_ASSIGN_OR_RETURN(w.post_norm, loader.Get(p + "post_attention_layernorm.weight", {d}));
  KVG_ASSIGN_OR_RETURN(at::Tensor wq, loader.Get(p + "self_attn.q_proj.weight", {q_rows, d}));
  KVG_ASSIGN_OR_RETURN(at::Tensor wk, loader.Get(p + "self_attn.k_proj.weight", {kv_rows, d}));
  KVG_ASSIGN_OR_RETURN(at::Tensor wv, loader.Get(p + "self_attn.v_proj.weight", {kv_rows, d}));
  if (c.rope.interleaved_pairs) {
    wq = InterleavedToHalves(wq, c.num_heads, hd);
    wk = InterleavedToHalves(wk, c.num_kv_heads, hd);
  }
  at::Tensor qkv_bias;
  if (c.qkv_bias) {
    KVG_ASSIGN_OR_RETURN(at::Tensor bq, loader.Get(p + "self_attn.q_proj.bias", {q_rows}));
    KVG_ASSIGN_OR_RETURN(at::Tensor bk, loader.Get(p + "self_attn.k_proj.bias", {kv_rows}));
    KVG_ASSIGN_OR_RETURN(at::Tensor bv, loader.Get(p + "self_attn.v_proj.bias", {kv_rows}));
    qkv_bias = at::cat({bq, bk, bv}, 0).contiguous();
  }
  // Fused matrices are new tensors: onto huge pages too, as the loader's are.
  w.qkv = MakeLinear(OnHugePages(at::cat({wq, wk, wv}, 0)), qkv_bias);
  KVG_ASSIGN_OR_RETURN(at::Tensor wo, loader.Get(p + "self_attn.o_proj.weight", {d, q_rows}));
  at::Tensor o_bias;
  if (c.o_bias) {
    KVG_ASSIGN_OR_RETURN(o_bias, loader.Get(p + "self_attn.o_proj.bias", {d}));
  }
  w.o = MakeLinear(wo, o_bias);
  if (c.qk_norm) {
    KVG_ASSIGN_OR_RETURN(w.q_norm, loader.Get(p + "self_attn.q_norm.weight", {hd}));
    KVG_ASSIGN_OR_RETURN(w.k_norm, loader.Get(p + "self_attn.k_norm.weight", {hd}));
  }
  KVG_ASSIGN_OR_RETURN(at::Tensor gate, loader.Get(p + "mlp.gate_proj.weight", {f, d}));
  KVG_ASSIGN_OR_RETURN(at::Tensor up, loader.Get(p + "mlp.up_proj.weight", {f, d}));
  w.gate_up = MakeLinear(OnHugePages(at::cat({gate, up}, 0)));
  KVG_ASSIGN_OR_RETURN(at::Tensor down, loader.Get(p + "mlp.down_proj.weight", {d, f}));
  w.down = MakeLinear(down);
  return absl::OkStatus();
}

absl::Status LlamaModel::Impl::LoadWeights(const Checkpoint& ckpt) {
  const ModelConfig& c = config;
  WeightLoader loader(*ckpt.weights, dtype, device);
  KVG_ASSIGN_OR_RETURN(embed,
                       loader.Get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  KVG_ASSIGN_OR_RETURN(final_norm, loader.Get("model.norm.weight", {c.hidden_size}));
  // Tied checkpoints usually omit lm_head.weight; honour it when present.
  if (!c.tie_word_embeddings || loader.Has("lm_head.weight")) {
    KVG_ASSIGN_OR_RETURN(at::Tensor head,
                         loader.Get("lm_head.weight", {c.vocab_size, c.hidden_size}));
    lm_head = MakeLinear(head);
  } else {
    lm_head = MakeLinear(embed);
  }
  layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) KVG_RETURN_IF_ERROR(LoadLayer(loader, l, layers[l]));
  return absl::OkStatus();
}

void LlamaModel::Impl::BuildRope() {
  at::Tensor inv_freq = InverseFrequencies(config.rope, config.head_dim);
  at::Tensor pos = at::arange(config.max_position_embeddings, at::kDouble);
  at::Tensor freqs = at::outer(pos, inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // halves layout: [cos0..cos_{n-1}, cos0..]
  rope_cos = emb.cos().to(device, dtype).contiguous();
  rope_sin = emb.sin().to(device, dtype).contiguous();
}

at::Tensor LlamaModel::Impl::RmsNorm(const at::Tensor& x, const at::Tensor& weight) const {
  // As HF: normalise in float32, cast back, then scale.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor inv = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + config.rms_norm_eps);
  return weight * (xf * inv).to(x.scalar_type());
}

at::Tensor LlamaModel::Impl::Rope(const at::Tensor& x, const at::Tensor& cos,
                                  const at::Tensor& sin) const {
  // x: [n, heads, hd]; cos/sin: [n, 1, hd]. rotate_half(x) = cat(-x2, x1).
  const int64_t half = config.head_dim / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

// H2O-style statistics: the attention each slot received, and from how many
// queries (a new token at offset i is seen by n - i of the n new queries).
// sums: [hkv, group, total], the n new queries' attention already summed.
void AddAttentionSums(SequenceKvCache& cache, int64_t layer, const at::Tensor& sums, int64_t n) {
  at::Tensor sum = cache.AttentionSum(layer);  // [hkv, group, retained]
  const int64_t retained = sum.size(2), total = sums.size(2);
  sum.add_(sums.narrow(2, total - retained, retained));  // approximated entries come first
  at::Tensor count = cache.AttentionCount(layer);
  if (retained > n) count.narrow(1, 0, retained - n).add_(static_cast<double>(n));
  count.narrow(1, retained - n, n).add_(at::arange(n, 0, -1, count.options()));
}

void AccumulateAttention(SequenceKvCache& cache, int64_t layer, const at::Tensor& probs,
                         int64_t n) {
  int64_t total = probs.size(2);
  const int64_t hkv = probs.size(0);
  at::Tensor sum = cache.AttentionSum(layer);  // [hkv, group, retained]
  // Approximated entries (if any) come first in the attention columns.
  const int64_t retained = sum.size(2);
  at::Tensor count = cache.AttentionCount(layer);
  if (n == 1) {  // a decode step: every retained slot is seen once (two ops, no reductions)
    sum.add_(probs.narrow(-1, total - retained, retained).view({hkv, sum.size(1), retained}));
    count.add_(1.0);
    return;
  }
  AddAttentionSums(cache, layer, probs.view({hkv, sum.size(1), n, total}).sum(2), n);
}

// Keeps what compressors asked for: recent / question-span post-RoPE queries
// and running moments of pre-RoPE queries. q_*: [n, heads, hd].
void RecordQueries(SequenceKvCache& cache, int64_t layer, const at::Tensor& q_pre,
                   const at::Tensor& q_post, int64_t first_pos) {
  const AttentionNeeds& needs = cache.options().needs;
  LayerAttentionStats& st = cache.MutableAttentionStats(layer);
  const int64_t n = q_pre.size(0);
  if (needs.query_moments) {
    const int64_t skip = std::clamp<int64_t>(needs.query_moments_skip - first_pos, 0, n);
    if (skip < n) {
      at::Tensor q = q_pre.narrow(0, skip, n - skip).to(at::kDouble);  // [m, h, d]
      at::Tensor sum = q.sum(0);
      at::Tensor outer = at::einsum("mhd,mhe->hde", {q, q});
      st.query_sum = st.query_sum.defined() ? st.query_sum + sum : sum;
      st.query_outer_sum = st.query_outer_sum.defined() ? st.query_outer_sum + outer : outer;
      st.query_count += n - skip;
    }
  }
  at::Tensor q_heads = q_post.transpose(0, 1);  // [h, n, d]
  if (needs.query_window > 0) {
    at::Tensor all =
        st.recent_queries.defined() ? at::cat({st.recent_queries, q_heads}, 1) : q_heads;
    for (int64_t i = 0; i < n; ++i)
      st.recent_positions.push_back(static_cast<int32_t>(first_pos + i));
    const int64_t keep = std::min<int64_t>(needs.query_window, all.size(1));
    st.recent_queries = all.narrow(1, all.size(1) - keep, keep).contiguous();
    st.recent_positions.erase(st.recent_positions.begin(), st.recent_positions.end() - keep);
  }
  if (needs.question_begin >= 0) {
    const int64_t lo = std::max(needs.question_begin, first_pos);
    const int64_t hi = std::min(needs.question_end, first_pos + n);
    if (lo < hi) {
      at::Tensor part = q_heads.narrow(1, lo - first_pos, hi - lo);
      st.question_queries = st.question_queries.defined() ? at::cat({st.question_queries, part}, 1)
                                                          : part.contiguous();
      for (int64_t p = lo; p < hi; ++p) st.question_positions.push_back(static_cast<int32_t>(p));
    }
  }
}

at::Tensor LlamaModel::Impl::Attention(const ForwardItem& item, int64_t layer, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v,
                                       int64_t first_pos) const {
  // q: [n, hq, hd]; k, v: [n, hkv, hd] for this item's new tokens.
  const int64_t n = q.size(0), hkv = config.num_kv_heads, hd = config.head_dim;
  const int64_t group = config.num_heads / hkv;
  item.cache->Append(layer, k.transpose(0, 1), v.transpose(0, 1), first_pos);
  if (at::Tensor out = PrefillAttentionOnCpu(*item.cache, layer, q); out.defined()) return out;
  at::Tensor keys = item.cache->AttentionKeys(layer);      // [hkv, T, hd]
  at::Tensor values = item.cache->AttentionValues(layer);  // [hkv, T, hd]
  const int64_t total = keys.size(1);
  // Group query heads under their kv head: [hkv, group * n, hd].
  at::Tensor qg = q.view({n, hkv, group, hd}).permute({1, 2, 0, 3}).reshape({hkv, group * n, hd});
  at::Tensor scores = at::matmul(qg, keys.transpose(1, 2)).mul_(1.0 / std::sqrt(double(hd)));
  if (n > 1) {
    // Cached entries all precede the new tokens; among the new tokens, causal.
    at::Tensor causal =
        at::ones({n, n}, at::TensorOptions().dtype(at::kBool).device(device)).triu(1);
    at::Tensor mask = at::zeros({n, total}, causal.options());
    mask.narrow(1, total - n, n).copy_(causal);
    scores = scores.view({hkv, group, n, total})
                 .masked_fill(mask, -INFINITY)
                 .view({hkv, group * n, total});
  }
  at::Tensor probs = at::softmax(scores, -1, at::kFloat);
  if (item.cache->options().needs.attention_sums) AccumulateAttention(*item.cache, layer, probs, n);
  probs = probs.to(dtype);
  at::Tensor out = at::matmul(probs, values);  // [hkv, group * n, hd]
  return out.view({hkv, group, n, hd}).permute({2, 0, 1, 3}).reshape({n, hkv * group * hd});
}

// A prefill's attention as loops over the cache in place (cpu::PrefillAttention):
// no [n, T] score tensor, mask or padded copy. Undefined where the loops do not
// apply (CUDA, f16, one token, packed or approximated entries).
at::Tensor LlamaModel::Impl::PrefillAttentionOnCpu(SequenceKvCache& cache, int64_t layer,
                                                   const at::Tensor& q) const {
  const int64_t n = q.size(0);
  if (!fused_cpu_decode || !device.is_cpu() || n < 2 ||
      (dtype != at::kFloat && dtype != at::kBFloat16) || cache.options().dtype != dtype) {
    return {};
  }
  thread_local std::vector<KvSpan> spans;
  spans.clear();
  if (!cache.AttentionSpans(layer, spans)) return {};
  int64_t total = 0;
  for (const KvSpan& span : spans) total += span.slots;
  const ModelConfig& c = config;
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty({n, c.num_heads * c.head_dim}, at::kFloat);
  at::Tensor sums;
  if (cache.options().needs.attention_sums) sums = at::zeros({c.num_heads, total}, at::kFloat);
  cpu::PrefillAttention(qc.data_ptr(), RowType(dtype),
                        {.heads = c.num_heads, .kv_heads = c.num_kv_heads, .head_dim = c.head_dim},
                        spans, n, out.data_ptr<float>(),
                        sums.defined() ? sums.data_ptr<float>() : nullptr, at::get_num_threads());
  if (sums.defined()) {
    AddAttentionSums(cache, layer, sums.view({c.num_kv_heads, c.num_heads / c.num_kv_heads, total}),
                     n);
  }
  return dtype == at::kFloat ? out : out.to(dtype);
}

LlamaModel::Impl::Projected LlamaModel::Impl::Project(int64_t l, const at::Tensor& x,
                                                      const at::Tensor& cos,
                                                      const at::Tensor& sin) const {
  const LayerWeights& w = layers[l];
  const ModelConfig& c = config;
  const int64_t rows = x.size(0), hd = c.head_dim;
  at::Tensor qkv = NormThenApply(w.qkv, x, w.input_norm);
  Projected p;
  p.q_pre = qkv.narrow(1, 0, c.num_heads * hd).view({rows, c.num_heads, hd});
  p.k = qkv.narrow(1, c.num_heads * hd, c.num_kv_heads * hd).view({rows, c.num_kv_heads, hd});
  p.v = qkv.narrow(1, (c.num_heads + c.num_kv_heads) * hd, c.num_kv_heads * hd)
            .view({rows, c.num_kv_heads, hd});
  if (c.qk_norm) {
    p.q_pre = RmsNorm(p.q_pre, w.q_norm);
    p.k = RmsNorm(p.k, w.k_norm);
  }
  p.q = Rope(p.q_pre, cos, sin);
  p.k = Rope(p.k, cos, sin);
  return p;
}

at::Tensor LlamaModel::Impl::Finish(int64_t l, const at::Tensor& x, const at::Tensor& attn) const {
  const LayerWeights& w = layers[l];
  at::Tensor x1 = ApplyAdd(w.o, attn.contiguous(), x);
  at::Tensor gu = NormThenApply(w.gate_up, x1, w.post_norm);
  return SwiGluApplyAdd(w.down, gu, x1);
}

at::Tensor LlamaModel::Impl::DecodeAttention(std::span<ForwardItem> batch,
                                             const std::vector<size_t>& items, int64_t layer,
                                             const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v,
                                             const std::vector<int64_t>& offsets) const {
  const int64_t b = static_cast<int64_t>(items.size()), hkv = config.num_kv_heads,
                hd = config.head_dim;
  const int64_t group = config.num_heads / hkv;
  std::vector<at::Tensor> keys(items.size()), values(items.size());
  int64_t longest = 0;
  for (size_t j = 0; j < items.size(); ++j) {
    const ForwardItem& item = batch[items[j]];
    const int64_t r = offsets[items[j]];
    item.cache->Append(layer, k.narrow(0, r, 1).transpose(0, 1), v.narrow(0, r, 1).transpose(0, 1),
                       item.cache->num_positions() - 1);
    keys[j] = item.cache->AttentionKeys(layer);
    values[j] = item.cache->AttentionValues(layer);
    longest = std::max(longest, keys[j].size(1));
  }
  at::Tensor kp = at::zeros({b, hkv, longest, hd}, keys[0].options());
  at::Tensor vp = at::zeros({b, hkv, longest, hd}, values[0].options());
  at::Tensor pad =
      at::zeros({b, 1, 1, longest}, at::TensorOptions().dtype(at::kBool).device(device));
  std::vector<at::Tensor> rows;
  for (size_t j = 0; j < items.size(); ++j) {
    const int64_t t = keys[j].size(1);
    kp[static_cast<int64_t>(j)].narrow(1, 0, t).copy_(keys[j]);
    vp[static_cast<int64_t>(j)].narrow(1, 0, t).copy_(values[j]);
    if (t < longest) pad[static_cast<int64_t>(j)].narrow(2, t, longest - t).fill_(true);
    rows.push_back(q.narrow(0, offsets[items[j]], 1));
  }
  at::Tensor qg = at::cat(rows, 0).view({b, hkv, group, hd});
  at::Tensor scores = at::matmul(qg, kp.transpose(2, 3)).mul_(1.0 / std::sqrt(double(hd)));
  at::Tensor probs = at::softmax(scores.masked_fill(pad, -INFINITY), -1, at::kFloat);
  for (size_t j = 0; j < items.size(); ++j) {
    SequenceKvCache& cache = *batch[items[j]].cache;
    if (!cache.options().needs.attention_sums) continue;
    // Each row's own columns: [hkv, group * 1, T].
    AccumulateAttention(cache, layer, probs[static_cast<int64_t>(j)].narrow(-1, 0, keys[j].size(1)),
                        1);
  }
  return at::matmul(probs.to(dtype), vp).view({b, hkv * group * hd});  // [b, hq * hd]
}

at::Tensor LlamaModel::Impl::Layer(int64_t l, std::span<ForwardItem> batch,
                                   const std::vector<int64_t>& offsets, const at::Tensor& x,
                                   const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rows = x.size(0);
  Projected p = Project(l, x, cos, sin);
  at::Tensor attn = batch.size() == 1
                        ? at::Tensor()
                        : at::empty({rows, config.num_heads * config.head_dim}, x.options());
  std::vector<size_t> decode;  // single-token rows: attended together
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t r0 = offsets[i], n = offsets[i + 1] - offsets[i];
    const int64_t first_pos = batch[i].cache->num_positions() - n;
    if (batch[i].cache->options().needs.any()) {
      RecordQueries(*batch[i].cache, l, p.q_pre.narrow(0, r0, n), p.q.narrow(0, r0, n), first_pos);
    }
    if (batch.size() > 1 && n == 1) {
      decode.push_back(i);
      continue;
    }
    at::Tensor out = Attention(batch[i], l, p.q.narrow(0, r0, n), p.k.narrow(0, r0, n),
                               p.v.narrow(0, r0, n), first_pos);
    if (batch.size() == 1)
      attn = out;
    else
      attn.narrow(0, r0, n).copy_(out);
  }
  if (decode.size() == 1) {
    const size_t i = decode[0];
    const int64_t r0 = offsets[i];
    attn.narrow(0, r0, 1).copy_(Attention(batch[i], l, p.q.narrow(0, r0, 1), p.k.narrow(0, r0, 1),
                                          p.v.narrow(0, r0, 1),
                                          batch[i].cache->num_positions() - 1));
  } else if (decode.size() > 1) {
    at::Tensor out = DecodeAttention(batch, decode, l, p.q, p.k, p.v, offsets);
    for (size_t j = 0; j < decode.size(); ++j)
      attn.narrow(0, offsets[decode[j]], 1).copy_(out.narrow(0, static_cast<int64_t>(j), 1));
  }
  return Finish(l, x, attn);
}

absl::Status LlamaModel::Impl::Validate(std::span<ForwardItem> batch) const {
  for (const ForwardItem& item : batch) {
    if (item.cache == nullptr) return absl::InvalidArgumentError("forward item without a cache");
    if (item.tokens.empty()) return absl::InvalidArgumentError("forward item without tokens");
    for (int32_t id : item.tokens) {
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", id, " is outside the vocabulary [0, ", config.vocab_size, ")"));
      }
    }
    const int64_t end = item.cache->num_positions() + static_cast<int64_t>(item.tokens.size());
    if (end > config.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat(
          "sequence of ", end, " tokens exceeds the context of ", config.max_position_embeddings));
    }
  }
  return absl::OkStatus();
}

LlamaModel::LlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlamaModel::~LlamaModel() = default;

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(Checkpoint checkpoint,
                                                             const ModelOptions& options) {
  auto impl = std::make_unique<Impl>();
  KVG_ASSIGN_OR_RETURN(impl->dtype,
                       ParseDtype(ResolveDtype(checkpoint, options.device, options.dtype)));
  KVG_ASSIGN_OR_RETURN(impl->device, ParseDevice(options.device));
  KVG_ASSIGN_OR_RETURN(impl->weights, ParseWeightFormat(options.weights));
  impl->fused_cpu_decode = options.fused_cpu_decode;
  if (impl->weights == WeightFormat::kInt8 &&
      (!impl->device.is_cpu() || (impl->dtype != at::kFloat && impl->dtype != at::kBFloat16))) {
    return absl::InvalidArgumentError("int8 weights run on CPU with f32 or bf16 activations only");
  }
  impl->config = checkpoint.config;
  impl->tokenizer_path = checkpoint.tokenizer_path;
  try {
    c10::InferenceMode guard;
    KVG_RETURN_IF_ERROR(impl->LoadWeights(checkpoint));
    impl->BuildRope();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading weights failed: ", e.what()));
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(impl)));
}

bool LlamaModel::DecodesOnCpu(std::span<const ForwardItem> batch) const {
  return impl_->CanDecodeOnCpu(batch);
}

absl::StatusOr<at::Tensor> LlamaModel::Forward(std::span<ForwardItem> batch) {
  Impl& m = *impl_;
  KVG_RETURN_IF_ERROR(m.Validate(batch));
  try {
    c10::InferenceMode guard;
    if (m.CanDecodeOnCpu(batch)) return m.DecodeOnCpu(batch);
    if (at::Tensor mixed = m.ForwardSplitOnCpu(batch); mixed.defined()) return mixed;
    return m.ForwardOps(batch);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("forward pass failed: ", e.what()));
  }
}

// A step that prefills some sequences while others decode: the decode rows
// take the CPU loops and the prefills the libtorch ops, rather than every
// row the ops (their batched decode attention copies every cache). Logit rows
// come back in batch order. Undefined when the split does not apply.
at::Tensor LlamaModel::Impl::ForwardSplitOnCpu(std::span<ForwardItem> batch) {
  std::vector<ForwardItem> decode, rest;
  std::vector<bool> is_decode;
  for (const ForwardItem& item : batch) {
    const bool one = item.tokens.size() == 1 && !item.all_logits;
    is_decode.push_back(one);
    (one ? decode : rest).push_back(item);
  }
  if (decode.empty() || rest.empty() || !CanDecodeOnCpu(decode)) return {};
  const at::Tensor decoded = DecodeOnCpu(decode), other = ForwardOps(rest);
  std::vector<at::Tensor> rows;
  int64_t d = 0, o = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (is_decode[i]) {
      rows.push_back(decoded.narrow(0, d++, 1));
    } else {
      const int64_t n = batch[i].all_logits ? static_cast<int64_t>(batch[i].tokens.size()) : 1;
      rows.push_back(other.narrow(0, o, n));
      o += n;
    }
  }
  return at::cat(rows, 0);
}

at::Tensor LlamaModel::Impl::ForwardOps(std::span<ForwardItem> batch) {
  Impl& m = *this;
  std::vector<int64_t> ids, positions, offsets{0}, logit_rows;
  for (ForwardItem& item : batch) {
    const int64_t start = item.cache->num_positions();
    for (size_t i = 0; i < item.tokens.size(); ++i) {
      ids.push_back(item.tokens[i]);
      positions.push_back(start + static_cast<int64_t>(i));
    }
    offsets.push_back(static_cast<int64_t>(ids.size()));
    if (item.all_logits) {
      for (int64_t r = offsets[offsets.size() - 2]; r < offsets.back(); ++r)
        logit_rows.push_back(r);
    } else {
      logit_rows.push_back(offsets.back() - 1);
    }
    item.cache->AppendTokenIds(item.tokens);
  }
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(m.device);
  at::Tensor pos = at::tensor(positions, at::kLong).to(m.device);
  at::Tensor cos = m.rope_cos.index_select(0, pos).unsqueeze(1);  // [rows, 1, hd]
  at::Tensor sin = m.rope_sin.index_select(0, pos).unsqueeze(1);
  at::Tensor x = m.embed.index_select(0, at::tensor(ids, at::kLong).to(m.device));
  for (int64_t l = 0; l < m.config.num_layers; ++l) x = m.Layer(l, batch, offsets, x, cos, sin);
  if (static_cast<int64_t>(logit_rows.size()) != x.size(0)) {
    x = x.index_select(0, at::tensor(logit_rows, at::kLong).to(long_opts));
  }
  if (m.Fusable(m.lm_head, x)) {
    const int64_t rows = x.size(0), d = x.size(1);
    float* x32 = Scratch(rows * d);
    cpu::RmsNormRows(x.data_ptr(), RowType(m.dtype), rows, d, m.final_norm.data_ptr(),
                     static_cast<float>(m.config.rms_norm_eps), x32);
    return m.RunMatVec(m.lm_head, x32, rows, at::kFloat);
  }
  return m.Apply(m.lm_head, m.RmsNorm(x, m.final_norm), at::kFloat);
}

KvCacheOptions LlamaModel::CacheOptions(int64_t reserve_slots, const AttentionNeeds& needs) const {
  return KvCacheOptions{.num_layers = impl_->config.num_layers,
                        .num_kv_heads = impl_->config.num_kv_heads,
                        .head_dim = impl_->config.head_dim,
                        .dtype = impl_->dtype,
                        .device = impl_->device,
                        .reserve_slots = reserve_slots,
                        .num_heads = impl_->config.num_heads,
                        .needs = needs};
}

std::pair<at::Tensor, at::Tensor> LlamaModel::RopeCosSin(int64_t first, int64_t count) const {
  at::Tensor inv_freq = InverseFrequencies(impl_->config.rope, impl_->config.head_dim);
  at::Tensor pos = at::arange(first, first + count, at::kDouble);
  at::Tensor freqs = at::outer(pos, inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(at::kFloat), emb.sin().to(at::kFloat)};
}

const ModelConfig& LlamaModel::config() const { return impl_->config; }
const std::string& LlamaModel::tokenizer_path() const { return impl_->tokenizer_path; }
at::Device LlamaModel::device() const { return impl_->device; }
at::ScalarType LlamaModel::dtype() const { return impl_->dtype; }
std::string LlamaModel::weights() const {
  return impl_->weights == WeightFormat::kInt8 ? "int8" : "native";
}

}  // namespace kvguard::engine
