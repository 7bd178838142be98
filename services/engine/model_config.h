// File: services/engine/model_config.h
//
// The shape of a Llama-family decoder, read from a Hugging Face `config.json`
// (or filled in from a llama2.c header). One struct covers llama (incl.
// Llama 3.1 `llama3` RoPE scaling), mistral, qwen2 (q/k/v bias) and qwen3
// (q/k RMSNorm, explicit head_dim).
//
//   KVG_ASSIGN_OR_RETURN(ModelConfig cfg, ParseHfConfig(json_text));
//   cfg.num_kv_heads, cfg.head_dim, cfg.rope.theta ...
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvguard::engine {

enum class RopeScaling { kNone, kLlama3, kLinear };

struct RopeConfig {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;             // llama3 / linear
  double low_freq_factor = 1.0;    // llama3
  double high_freq_factor = 4.0;   // llama3
  int64_t original_max_position = 8192;  // llama3
  // llama2.c rotates interleaved pairs (0,1),(2,3)...; HF rotates halves.
  // The loader permutes q/k weight rows so the forward pass only knows halves.
  bool interleaved_pairs = false;
};

struct ModelConfig {
  std::string family;  // "llama", "mistral", "qwen2", "qwen3"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool qkv_bias = false;   // qwen2, or llama with attention_bias
  bool o_bias = false;     // llama with attention_bias
  bool qk_norm = false;    // qwen3
  bool tie_word_embeddings = false;
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;
};

// Parses config.json text. Unknown model_type, missing sizes, or sizes that
// do not divide (heads vs kv heads) are InvalidArgument errors.
absl::StatusOr<ModelConfig> ParseHfConfig(std::string_view json_text);

// Reads eos/bos ids from generation_config.json text and merges them into
// `config` (generation_config wins, as in transformers' generate()).
absl::Status MergeGenerationConfig(std::string_view json_text, ModelConfig& config);

}  // namespace kvguard::engine
