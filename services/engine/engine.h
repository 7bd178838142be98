// File: services/engine/engine.h
//
// The engine facade: a loaded model, its tokenizer (when the checkpoint has
// one) and generation with the KV cache (prefill, then one cached decode
// step per token). No libtorch types cross this header, so tools and
// services that only generate compile without torch.
//
//   KVG_ASSIGN_OR_RETURN(auto engine, Engine::Load("models/stories260K/stories260K.bin", {}));
//   GenerateRequest req{.prompt_ids = {1}, .max_new_tokens = 32};
//   KVG_ASSIGN_OR_RETURN(GenerateResult out, engine->Generate(req));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressors/compression_spec.h"
#include "services/engine/model_config.h"
#include "services/engine/sampler.h"
#include "services/engine/tokenizer.h"

namespace kvguard::engine {

struct EngineOptions {
  std::string device = "cpu";
  std::string dtype = "auto";      // see ModelOptions::dtype
  std::string weights = "native";  // see ModelOptions::weights
  int num_threads = 0;             // intra-op threads for CPU; 0 = libtorch's default
};

struct GenerateRequest {
  std::vector<int32_t> prompt_ids;
  int32_t max_new_tokens = 64;
  SamplingParams sampling;
  std::vector<std::string> stop_strings;  // needs a tokenizer
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  compress::CompressionSpec compression;  // KV-cache compression (none by default)
};

enum class FinishReason { kLength, kEos, kStop, kCancelled };
const char* FinishReasonName(FinishReason reason);  // "length", "eos", "stop", "cancelled"

struct GenerateResult {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> output_ids;
  std::string text;  // decoded output (cut before a matched stop string); empty without tokenizer
  FinishReason finish_reason = FinishReason::kLength;
  std::vector<SampledToken> tokens;  // per output token: logprob, entropy, margin, top logprobs
  int64_t kv_bytes = 0;              // final cache bytes
  int64_t retained_tokens = 0;       // final retained slots per layer and head (mean)
  int64_t evicted_slots = 0;         // removed by compression, over layers and heads
  std::vector<int64_t> retained_per_step;
  int64_t recomputed_positions = 0;  // restored by RECOVERY  // mean retained slots per layer/head
                                     // after each step's compression
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

class Engine {
 public:
  // `model_path`: checkpoint directory or llama2.c .bin.
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const std::string& model_path,
                                                      const EngineOptions& options);
  ~Engine();

  [[nodiscard]] const ModelConfig& config() const;
  // The compute dtype in use ("f32", "bf16", "f16"), after "auto" was resolved.
  [[nodiscard]] std::string dtype() const;
  // nullptr when the checkpoint has no tokenizer.json.
  [[nodiscard]] const Tokenizer* tokenizer() const;

  // Logits for every position of `ids` (one prefill), float32 row-major [T][vocab].
  absl::StatusOr<std::vector<std::vector<float>>> Logits(const std::vector<int32_t>& ids);

  // Validates the request (ids in vocabulary, prompt within context, sampling
  // ranges, stop strings need a tokenizer) and generates. `on_token`, if
  // given, sees each token as it is produced.
  absl::StatusOr<GenerateResult> Generate(
      const GenerateRequest& request,
      const std::function<void(const SampledToken&)>& on_token = nullptr);

  absl::Status ValidateRequest(const GenerateRequest& request) const;

  // Generates all `requests` together, one batched forward per step (as the
  // server's scheduler does), and times the steps after the joint prefill.
  struct BatchGeneration {
    std::vector<GenerateResult> results;
    int64_t decode_steps = 0;
    double decode_seconds = 0;
  };
  absl::StatusOr<BatchGeneration> GenerateBatch(const std::vector<GenerateRequest>& requests);

  // Prefills `ids`, runs the compressor once on every layer, and returns the
  // original positions each layer's kv heads keep: [layer][kv_head][positions ascending].
  absl::StatusOr<std::vector<std::vector<std::vector<int32_t>>>> Kept(
      const std::vector<int32_t>& ids, const compress::CompressionSpec& spec);
  // The compressor's raw scores after the same prefill, [layer][kv_head][slot].
  absl::StatusOr<std::vector<std::vector<std::vector<float>>>> Scores(
      const std::vector<int32_t>& ids, const compress::CompressionSpec& spec);

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvguard::engine
