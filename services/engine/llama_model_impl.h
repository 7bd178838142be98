// File: services/engine/llama_model_impl.h
//
// LlamaModel's private state, shared by its two translation units:
// llama_model.cc (loading, the libtorch forward pass, recompute) and
// llama_decode_cpu.cc (the CPU decode step as plain loops). Nothing else
// includes this.
#pragma once

#include <ATen/ATen.h>

#include <span>
#include <string>
#include <vector>

#include "services/engine/cpu_matvec.h"
#include "services/engine/llama_model.h"

namespace kvguard::engine {

// One projection y = x W^T + b. On CPU, decode-sized inputs (a few rows) go
// through cpu::MatVec, which streams W once at memory bandwidth; larger inputs
// (prefill) through libtorch's GEMM. With int8 weights only the quantized
// matrix is kept, and a GEMM dequantizes it on the fly.
struct Linear {
  at::Tensor weight;         // [out, in], compute dtype (undefined when int8)
  at::Tensor bias;           // [out], compute dtype, optional
  at::Tensor bias_f32;       // the bias for MatVec
  at::Tensor q8, scales;     // int8 weights: [out, in] int8 and [out] f32 per-row scales
  cpu::WeightMatrix matvec;  // views of weight or q8 (CPU f32/bf16/int8 only)
  int64_t matvec_rows = 0;   // inputs of up to this many rows take MatVec (16 a call)
};

struct LayerWeights {
  at::Tensor input_norm, post_norm;  // [d]
  Linear qkv;                        // [(hq + 2 hkv) * hd, d], bias optional
  Linear o;                          // [d, hq * hd]
  at::Tensor q_norm, k_norm;         // [hd], qwen3 only
  Linear gate_up;                    // [2f, d]
  Linear down;                       // [d, f]
};

enum class WeightFormat { kNative, kInt8 };

class WeightLoader;  // llama_model.cc

struct DecodeBuffers;  // llama_decode_cpu.cc

struct LlamaModel::Impl {
  ModelConfig config;
  std::string tokenizer_path;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  WeightFormat weights = WeightFormat::kNative;
  bool fused_cpu_decode = true;
  at::Tensor embed;               // [vocab, d]
  at::Tensor final_norm;          // [d]
  Linear lm_head;                 // [vocab, d] (the embedding when tied)
  at::Tensor rope_cos, rope_sin;  // [max_pos, hd] in compute dtype
  std::vector<LayerWeights> layers;

  absl::Status LoadWeights(const Checkpoint& ckpt);
  absl::Status LoadLayer(WeightLoader& loader, int64_t l, LayerWeights& w);
  void BuildRope();
  Linear MakeLinear(at::Tensor weight, at::Tensor bias = {}) const;
  // x [rows, in] -> [rows, out] in `out` dtype (the compute dtype unless asked otherwise).
  at::Tensor Apply(const Linear& linear, const at::Tensor& x,
                   at::ScalarType out = at::ScalarType::Undefined) const;
  // The same products with the elementwise step before or after them fused
  // into one pass on CPU decode rows (libtorch ops otherwise; equal results):
  // Apply(linear, RmsNorm(x, norm)), residual + Apply(linear, a), and
  // residual + Apply(down, silu(gate) * up).
  at::Tensor NormThenApply(const Linear& linear, const at::Tensor& x, const at::Tensor& norm) const;
  at::Tensor ApplyAdd(const Linear& linear, const at::Tensor& a, const at::Tensor& residual) const;
  at::Tensor SwiGluApplyAdd(const Linear& down, const at::Tensor& gate_up,
                            const at::Tensor& residual) const;
  bool Fusable(const Linear& linear, const at::Tensor& x) const;
  at::Tensor RunMatVec(const Linear& linear, const float* x32, int64_t rows, at::ScalarType out,
                       const at::Tensor& residual = {}) const;
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const;
  at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;
  at::Tensor Attention(const ForwardItem& item, int64_t layer, const at::Tensor& q,
                       const at::Tensor& k, const at::Tensor& v, int64_t first_pos) const;
  at::Tensor PrefillAttentionOnCpu(SequenceKvCache& cache, int64_t layer,
                                   const at::Tensor& q) const;
  struct Projected {
    at::Tensor q_pre, q, k, v;  // [rows, heads, hd] (q_pre before RoPE), k/v [rows, kv_heads, hd]
  };
  Projected Project(int64_t l, const at::Tensor& x, const at::Tensor& cos,
                    const at::Tensor& sin) const;
  at::Tensor Finish(int64_t l, const at::Tensor& x, const at::Tensor& attn) const;
  // One decode token each for `items` of the batch, attended together over
  // their caches padded to the longest (one matmul pair, not one per item);
  // H2O-style attention sums are taken from each row's own columns.
  at::Tensor DecodeAttention(std::span<ForwardItem> batch, const std::vector<size_t>& items,
                             int64_t layer, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const std::vector<int64_t>& offsets) const;
  at::Tensor Layer(int64_t l, std::span<ForwardItem> batch, const std::vector<int64_t>& offsets,
                   const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
  absl::Status Validate(std::span<ForwardItem> batch) const;

  // The CPU decode step as plain loops over preallocated buffers
  // (llama_decode_cpu.cc): every item brings one token, the weights are
  // MatVec-able for that many rows, and no cache needs attention statistics
  // or holds packed/approximated entries. Same results as the libtorch path
  // up to summation order; `fused_cpu_decode = false` keeps that path.
  [[nodiscard]] bool CanDecodeOnCpu(std::span<const ForwardItem> batch) const;
  at::Tensor DecodeOnCpu(std::span<ForwardItem> batch) const;
  void AttendLayer(std::span<ForwardItem> batch, int64_t l, const std::vector<int64_t>& positions,
                   DecodeBuffers& b) const;
  // Forward with libtorch ops for every row (prefills, and what the loops do not cover).
  at::Tensor ForwardOps(std::span<ForwardItem> batch);
  at::Tensor ForwardSplitOnCpu(std::span<ForwardItem> batch);
};

}  // namespace kvguard::engine
