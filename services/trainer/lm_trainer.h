// File: services/trainer/lm_trainer.h
//
// Trains the project's own small Llama-family model on the arithmetic word
// problems of research/problems.h and writes it as a Hugging Face checkpoint
// directory (config.json, model.safetensors, tokenizer.json) that the engine
// loads like any downloaded model. No libtorch types cross this header.
//
//   LmShape shape{.dim = 160, .layers = 4};
//   auto model = LmModel::Create(shape, /*seed=*/1);
//   KVG_ASSIGN_OR_RETURN(TrainReport rep, TrainLm(*model, options, on_step));
//   KVG_RETURN_IF_ERROR(model->Save("models/arith-lm"));
//   KVG_ASSIGN_OR_RETURN(EvalResult ev, EvaluateGreedy("models/arith-lm", problems, 200, 1));
//
// The training forward pass is the same math as services/engine/llama_model.cc
// (RMSNorm, halves-layout RoPE, GQA, SwiGLU, tied embeddings), with full
// causal attention and no cache; the unit test checks logits agree.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"
#include "research/problems.h"

namespace kvguard::trainer {

// Character-level vocabulary: ids 0..255 are the bytes (GPT-2 byte-level
// symbols, no merges, so every digit is its own token), then two specials.
inline constexpr int32_t kEosId = 256;      // "<|endoftext|>", also the pad
inline constexpr int32_t kImStartId = 257;  // "<|im_start|>", reserved
inline constexpr int64_t kVocabSize = 258;

// The tokenizer.json text for that vocabulary.
std::string CharTokenizerJson();
// Byte ids of `text` (what the tokenizer above encodes it to).
std::vector<int32_t> EncodeBytes(std::string_view text);

struct LmShape {
  int64_t dim = 160;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t ffn = 448;
  int64_t max_positions = 512;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
};
absl::Status ValidateShape(const LmShape& shape);
// The shape recorded in a checkpoint dir's config.json.
absl::StatusOr<LmShape> ReadShape(const std::string& dir);

class LmModel {
 public:
  struct Impl;
  static absl::StatusOr<std::unique_ptr<LmModel>> Create(const LmShape& shape, uint64_t seed);
  ~LmModel();

  [[nodiscard]] const LmShape& shape() const;
  [[nodiscard]] int64_t num_parameters() const;
  // Logits of every position of one sequence, [T][vocab] (no grad).
  [[nodiscard]] std::vector<std::vector<float>> Logits(const std::vector<int32_t>& ids) const;
  // Writes config.json, generation_config.json, tokenizer.json and
  // model.safetensors (f32) into `dir`, creating it.
  absl::Status Save(const std::string& dir) const;
  // Replaces the weights with those of a checkpoint Save() wrote (same shape),
  // so a run can continue from an earlier one.
  absl::Status LoadWeights(const std::string& dir);

  Impl& impl() { return *impl_; }

 private:
  explicit LmModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct TrainOptions {
  int64_t steps = 3000;
  int64_t batch = 32;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;  // cosine decays to lr * this
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  uint64_t seed = 1;
  int threads = 1;
  // > 0: stop after this many seconds, and run the cosine schedule on
  // max(step, time) progress so a time-boxed run still ends at the low lr.
  double time_budget_s = 0;
  research::ProblemOptions problems;
};

struct StepStats {
  int64_t step = 0;  // 1-based, after the update
  int64_t total = 0;
  double loss = 0;  // this batch's mean loss over solution tokens
  double lr = 0;
  double tokens_per_s = 0;  // all positions processed (prompt included)
  double elapsed_s = 0;
};

struct TrainReport {
  std::vector<int64_t> steps;
  std::vector<double> losses;  // per step
  double final_loss = 0;       // mean of the last min(50, steps) losses
  double wall_s = 0;
  int64_t tokens = 0;
};

// Trains on a fresh stream of train-split problems (batch b of step s takes
// problems [s*b, s*b+b)), packed right-padded to the batch's max length; the
// loss covers the solution tokens and the final EOS only.
absl::StatusOr<TrainReport> TrainLm(LmModel& model, const TrainOptions& options,
                                    const std::function<void(const StepStats&)>& on_step);

struct EvalSample {
  std::string id, output;
  int64_t gold = 0;
  bool correct = false;
};
struct EvalResult {
  int64_t total = 0, correct = 0;
  double accuracy = 0, seconds = 0;
  std::vector<EvalSample> samples;
};

// Uncompressed greedy accuracy on test-split problems [0, count) through the
// real engine (Engine::Load on `model_dir`, Generate until EOS), with `weights`
// "native" or "int8" (ModelOptions::weights).
absl::StatusOr<EvalResult> EvaluateGreedy(
    const std::string& model_dir, const research::ProblemOptions& problems, int64_t count,
    int threads, const std::function<void(int64_t done, int64_t total)>& on_progress = nullptr,
    const std::string& weights = "native");

// Parses "key=value" problem options over `base` (values are ints or strings).
absl::StatusOr<research::ProblemOptions> ApplyProblemOpts(
    research::ProblemOptions base, const std::vector<std::string>& key_values);

// Writes training.json (`record`, plus the curve summary), loss.csv and loss.svg.
absl::Status WriteTrainingRecord(const std::string& dir, const TrainReport& report,
                                 const nlohmann::json& record);

}  // namespace kvguard::trainer
