// File: services/engine/sequence.h
//
// One generation in flight: its KV cache, sampler, compression, stopping
// rules, streamed text and result. The scheduler (or Engine::Generate for a
// single request) drives it one step at a time:
//
//   KVG_ASSIGN_OR_RETURN(auto seq, Sequence::Create(model, tokenizer, request, {}));
//   while (!seq->finished()) {
//     ForwardItem* item = seq->NextForward();           // prompt first, then the last token
//     ... model.Forward(batch of items) ...
//     KVG_ASSIGN_OR_RETURN(StepResult r, seq->AfterForward(logits_row));
//     ... stream r.text_delta; guard directives: seq->SetRatio(), SetProtected(), Rebuild() ...
//   }
//   GenerateResult result = seq->Result();
//
// The per-step hook point is between AfterForward() and the next
// NextForward(): whatever is set there applies to the next step.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressors/cache_compression.h"
#include "services/engine/engine.h"
#include "services/engine/kv_cache.h"
#include "services/engine/llama_model.h"
#include "services/engine/sampler.h"
#include "services/engine/tokenizer.h"

namespace kvguard::engine {

struct SequenceOptions {
  int32_t report_top_logprobs = 0;  // top logprobs to compute for the guard (e.g. 20)
  // Accumulate the attention every entry receives, and list the positions
  // each step evicts with the attention they had received: the guard counts
  // them, and ranks them to pin after RECOVERY. Costs every forward.
  bool gather_attention = false;
  std::shared_ptr<KvArena> kv_arena;  // the server's KV pool; null = unpooled
};

struct StepResult {
  int64_t step = 0;                      // 0 = the token sampled after prefill
  SampledToken token;                    // with top logprobs as requested by the client
  std::vector<TokenLogprob> report_top;  // top logprobs for the guard
  std::string text_delta;                // new text (UTF-8 safe, stop strings withheld)
  bool finished = false;
  FinishReason finish_reason = FinishReason::kLength;
  KvCacheStats kv;
  double ratio = 0;                        // ratio in force after this step's compression
  std::vector<int32_t> evicted_positions;  // gone from every layer and head this step
  std::vector<float> evicted_attention;    // mean attention each had received
};

class Sequence {
 public:
  // Validates nothing: call Engine::ValidateRequest (or equivalent) first.
  static absl::StatusOr<std::unique_ptr<Sequence>> Create(LlamaModel& model,
                                                          const Tokenizer* tokenizer,
                                                          const GenerateRequest& request,
                                                          const SequenceOptions& options);
  ~Sequence();

  // --- the step protocol ---
  ForwardItem* NextForward();
  absl::StatusOr<StepResult> AfterForward(const float* logits_row);
  [[nodiscard]] bool finished() const { return finished_; }
  // Ends the sequence now (client cancel, deadline, shutdown) and frees its KV.
  void Cancel();

  // --- the KV pool (see SequenceKvCache) ---
  // Blocks the next forward (prefill or one decode token) takes from the pool.
  [[nodiscard]] int64_t BlocksForNextStep() const;
  // Preemption: the KV leaves the pool (kept by the sequence), tokens and
  // sampler state stay; Resume() puts it back and the sequence continues
  // exactly where it stopped.
  void Preempt() { cache_->SwapOut(); }
  absl::Status Resume() { return cache_->SwapIn(); }
  [[nodiscard]] bool preempted() const { return cache_->swapped_out(); }

  // --- control between steps (the guard's directive) ---
  absl::Status SetRatio(double ratio);
  void SetProtected(std::set<int32_t> positions) { protected_ = std::move(positions); }
  // Holds eviction while set (SAFE mode: the ratio relaxes but nothing more is evicted).
  void SetEvictionPaused(bool paused) { eviction_paused_ = paused; }
  // RECOVERY by rebuilding: the next forward prefills the whole history
  // (prompt and generated tokens) into a fresh cache, so every position's
  // entries are back, exactly as an uncompressed run holds them. Takes effect
  // at NextForward() (safe to call between a forward and its AfterForward);
  // in a pool, only when the blocks would be free. Returns the positions that
  // some head lacked.
  absl::StatusOr<int64_t> Rebuild();
  // A rebuild waits for the next NextForward(): a forward run before it used
  // the old cache, and its AfterForward is better skipped (the step is redone).
  [[nodiscard]] bool rebuilding() const { return rebuilt_ != nullptr; }

  [[nodiscard]] GenerateResult Result() const;
  [[nodiscard]] const SequenceKvCache& cache() const { return *cache_; }
  [[nodiscard]] int64_t step() const { return step_; }
  [[nodiscard]] double ratio() const;
  [[nodiscard]] const GenerateRequest& request() const { return request_; }
  [[nodiscard]] double time_to_first_token_s() const { return ttft_s_; }

 private:
  Sequence(LlamaModel& model, const Tokenizer* tokenizer, const GenerateRequest& request);
  absl::Status Compress(std::vector<int32_t>& evicted, std::vector<float>& evicted_attention);
  void CheckStop(const SampledToken& token, StepResult& r);
  std::string TakeText(bool final);
  [[nodiscard]] int64_t RebuildBlocks(const SequenceKvCache& fresh) const;

  LlamaModel& model_;
  const Tokenizer* tokenizer_;
  GenerateRequest request_;
  SequenceOptions options_;
  std::unique_ptr<SequenceKvCache> cache_;
  std::unique_ptr<SequenceKvCache> rebuilt_;  // replaces cache_ at the next NextForward()
  std::unique_ptr<compress::CacheCompression> compression_;
  std::unique_ptr<Sampler> sampler_;
  std::unique_ptr<IncrementalDecoder> decoder_;
  ForwardItem item_;
  std::vector<int32_t> history_;
  std::set<int32_t> protected_;
  bool eviction_paused_ = false;
  int64_t step_ = 0;
  int64_t budget_ = 0;
  bool finished_ = false;
  GenerateResult result_;
  std::string text_;    // decoded so far (stop strings cut)
  size_t emitted_ = 0;  // bytes of text_ already streamed
  size_t max_stop_len_ = 0;
  std::chrono::steady_clock::time_point start_;
  double ttft_s_ = 0;
};

// Every sequence's AfterForward after one batched forward (sequence i reads
// row i of `logits`, rows `row_stride` floats apart). Sequences run in
// parallel on the intra-op threads, each single-threaded inside: compression
// scoring is serial small-op work per sequence, which left the second core
// idle while one thread scored the whole batch. A sequence's step touches
// only its own state (the block pool it returns blocks to locks).
std::vector<absl::StatusOr<StepResult>> AfterForwardAll(std::span<Sequence* const> sequences,
                                                        const float* logits, int64_t row_stride);

}  // namespace kvguard::engine
