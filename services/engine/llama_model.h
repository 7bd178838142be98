// File: services/engine/llama_model.h
//
// The Llama-family decoder forward pass on libtorch (CPU or CUDA; f32, bf16,
// f16). Weights come from a Checkpoint (HF safetensors or llama2.c) and are
// converted once at load to the compute dtype, with q/k/v and gate/up fused
// into single matrices so a layer is a handful of large ops.
//
// One Forward() call runs a batch of sequences, each bringing its own new
// tokens and its own KV cache: projections and MLPs run on all rows at once,
// attention runs per sequence over that sequence's retained cache (caches of
// different lengths, as continuous batching needs).
//
//   KVG_ASSIGN_OR_RETURN(auto model, LlamaModel::Load(std::move(ckpt), {}));
//   SequenceKvCache cache(model->CacheOptions());
//   ForwardItem item{.cache = &cache, .tokens = {1, 2, 3}};
//   KVG_ASSIGN_OR_RETURN(at::Tensor logits, model->Forward({&item, 1}));  // [1, vocab]
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/engine/checkpoint.h"
#include "services/engine/kv_cache.h"

namespace kvguard::engine {

struct ModelOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  // "f32", "bf16", "f16", or "auto": the dtype the checkpoint stores its weights in
  // (bf16 stays bf16 on CPU and CUDA; f16 is f16 on CUDA, f32 on CPU, where f16 GEMMs are slow).
  std::string dtype = "auto";
  // "native": weights in the compute dtype; "int8": symmetric per-channel int8
  // weights (CPU), dequantized on the fly for prefill GEMMs.
  std::string weights = "native";
  // CPU decode steps (one token per sequence, f32/bf16) as plain loops over
  // reused buffers (llama_decode_cpu.cc); false: the libtorch ops, which the
  // loops are tested against.
  bool fused_cpu_decode = true;
};

// The compute dtype "auto" resolves to for a checkpoint on a device ("cpu", "cuda[:N]").
std::string ResolveDtype(const Checkpoint& checkpoint, const std::string& device,
                         const std::string& dtype);
// "f32", "bf16", "f16" (other types: their libtorch name).
std::string DtypeName(at::ScalarType dtype);

// One sequence's share of a batched forward pass.
struct ForwardItem {
  SequenceKvCache* cache = nullptr;  // receives the new tokens' keys/values
  std::vector<int32_t> tokens;       // new tokens, at positions cache->num_positions()...
  bool all_logits = false;           // logits for every new token, else only the last
};

class LlamaModel {
 public:
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(Checkpoint checkpoint,
                                                          const ModelOptions& options);
  ~LlamaModel();

  // Runs the new tokens of every item through the model, appending their
  // keys/values and ids to the items' caches. Returns float32 logits on the
  // model's device: one row per requested position, items in order.
  // Errors (ids out of vocabulary, positions past the context) change nothing.
  absl::StatusOr<at::Tensor> Forward(std::span<ForwardItem> batch);
  // Whether Forward(batch) runs as the CPU decode loops (llama_decode_cpu.cc)
  // rather than libtorch ops: CPU f32/bf16, one token per item, no attention
  // statistics or packed/approximated cache entries, ModelOptions::fused_cpu_decode.
  [[nodiscard]] bool DecodesOnCpu(std::span<const ForwardItem> batch) const;

  // Options for a cache that fits this model (dtype, device, shape).
  [[nodiscard]] KvCacheOptions CacheOptions(int64_t reserve_slots = 0,
                                            const AttentionNeeds& needs = {}) const;
  // RoPE cos/sin (halves layout, float32, CPU) for positions first..first+count-1,
  // computed on the fly (positions may exceed the context, as ExpectedAttention needs).
  [[nodiscard]] std::pair<at::Tensor, at::Tensor> RopeCosSin(int64_t first, int64_t count) const;
  [[nodiscard]] const ModelConfig& config() const;
  [[nodiscard]] const std::string& tokenizer_path() const;
  [[nodiscard]] at::Device device() const;
  [[nodiscard]] at::ScalarType dtype() const;
  [[nodiscard]] std::string weights() const;  // "native" or "int8" (ModelOptions::weights)

 private:
  struct Impl;
  explicit LlamaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvguard::engine
