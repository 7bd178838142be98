// File: research/pipeline/sweep.h
//
// `kvguard sweep`: prompts x (uncompressed + compressors x ratios) through
// the real engine, each trace recorded the way the live guard sees it: the
// server's StepReport for every token turned into the guard's feature row,
// plus the trace's outcome (loop / non-termination / wrong / correct) and
// catastrophe onset. Sequences of one configuration are decoded together
// (continuous batching); finished shards are skipped on re-runs (resume).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "research/problems.h"
#include "research/prompt_set.h"

namespace kvguard::engine {
class LlamaModel;
class Tokenizer;
}  // namespace kvguard::engine

namespace kvguard::research {

struct SweepOptions {
  std::string model_path;
  std::string out_dir;
  std::vector<std::string> compressors = {"streaming_llm", "snapkv", "tova", "knorm"};
  std::vector<double> ratios = {0.5, 0.75, 0.875};
  std::vector<std::string> compressor_options;  // "name:key=value" applied to that compressor
  PromptSetSpec prompt_set;  // which prompts: arith problems or GSM8K (recorded in the manifest)
  int max_new_tokens = 256;
  // Decode-time loop breakers for every request (the cheap baselines the guard is judged against).
  double repetition_penalty = 1.0;
  int no_repeat_ngram = 0;
  int batch = 16;
  int threads = 0;  // CPU intra-op threads (0 = libtorch default)
};

// A checkpoint with its tokenizer (the research passes prompt with text), on
// `threads` intra-op and BLAS threads (0 = the defaults). `command` names the
// caller in the error for a checkpoint without a tokenizer.
struct TextModel {
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::unique_ptr<engine::LlamaModel> model;
};
absl::StatusOr<TextModel> LoadTextModel(const std::string& path, int threads,
                                        const std::string& command);

// Token span of the question (Q2C's span, the prefill risk's queries): from the
// token where "Question:" starts to the end of the prompt.
absl::StatusOr<std::pair<int64_t, int64_t>> QuestionSpan(const engine::Tokenizer& tok,
                                                         const Problem& p, int64_t prompt_tokens);

// Progress: (traces done, traces total).
absl::Status RunSweep(const SweepOptions& options,
                      const std::function<void(int64_t, int64_t)>& progress);

}  // namespace kvguard::research
