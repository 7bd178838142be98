// File: services/engine/checkpoint.h
//
// Opens a model checkpoint without touching tensors: a Hugging Face
// checkpoint directory (config.json + model.safetensors or a sharded index,
// optional generation_config.json and tokenizer.json) or a llama2.c `.bin`
// file. The result is a config plus borrowed weight views under Hugging Face
// tensor names, so the model builder has a single code path.
//
//   KVG_ASSIGN_OR_RETURN(Checkpoint ckpt, OpenCheckpoint("tests/data/models/tiny-llama"));
//   const TensorView* w = ckpt.weights->Find("model.norm.weight");
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/engine/model_config.h"
#include "services/engine/safetensors.h"

namespace kvguard::engine {

// Named, validated weight views; they stay valid while the source lives.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // nullptr when the checkpoint has no tensor of that name.
  [[nodiscard]] virtual const TensorView* Find(const std::string& name) const = 0;
};

struct Checkpoint {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  std::string tokenizer_path;  // empty when the checkpoint ships no tokenizer.json
  std::string format;          // "hf" or "llama2c"
};

// `path` is a checkpoint directory or a llama2.c .bin file.
absl::StatusOr<Checkpoint> OpenCheckpoint(const std::string& path);

// llama2.c format: seven int32 (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; negative vocab = separate classifier),
// then float32 weights. Exposed for tests.
absl::StatusOr<Checkpoint> OpenLlama2cCheckpoint(const std::string& path);

}  // namespace kvguard::engine
