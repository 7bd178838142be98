// File: services/engine/sampler.h
//
// Turns one row of logits into the next token: repetition penalty and
// no-repeat n-gram blocking, then
// greedy (temperature 0) or temperature / top-k / top-p sampling with a
// seeded generator (same seed, same logits -> same tokens). Also reports the
// per-token quantities the guard consumes (entropy, margin, chosen logprob)
// and, on request, the top-k logprobs. Works on plain floats: the caller
// copies the row off the device once.
//
//   Sampler sampler({.temperature = 0.7, .top_p = 0.9, .seed = 42});
//   SampledToken t = sampler.Sample(logits_row, history);
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace kvguard::engine {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy
  int32_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  // 1 = off (HF/CTRL rule: divide positive logits, multiply negative).
  double repetition_penalty = 1.0;
  // 0 = off; N >= 2 bans a token that would repeat an N-gram of the generated
  // text (HF's no_repeat_ngram_size, but over the generated tokens only: on a
  // character-level model the prompt holds every word the answer must write).
  int32_t no_repeat_ngram = 0;
  uint64_t seed = 0;
  int32_t logprobs = 0;  // top-k logprobs to report per token (0 = none)
};

// Checks ranges; the message names the field.
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct TokenLogprob {
  int32_t id;
  float logprob;
};

struct SampledToken {
  int32_t id = -1;
  float logprob = 0;  // of the chosen token, under the model's distribution (after penalty)
  float entropy = 0;  // nats, of that distribution
  float margin = 0;   // top-1 minus top-2 logit
  std::vector<TokenLogprob> top_logprobs;  // `logprobs` best, descending
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

  // `history`: the sequence so far (prompt + generated), for the penalty;
  // history[generated_from:] are the generated tokens, for the n-gram rule.
  SampledToken Sample(std::span<const float> logits, std::span<const int32_t> history,
                      size_t generated_from = 0);

 private:
  int32_t Draw(const std::vector<float>& logits);
  // Sets to -inf the logits of tokens that would repeat an n-gram of `generated`.
  void BanRepeatedNgrams(std::span<const int32_t> generated, std::vector<float>& logits) const;

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;
  std::vector<int32_t> top_;  // the top-logprob heap, reused across steps
};

}  // namespace kvguard::engine
