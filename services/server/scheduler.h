// File: services/server/scheduler.h
//
// Continuous batching over one model: requests join and leave between decode
// steps. One thread runs the step loop; each step goes through these phases,
// each a function below:
//
//   ReapCancelled()  streams the client gave up end; their KV is freed
//   Admit()          preempted sequences resume first (oldest first), then
//                    queued requests start, first come first served, while
//                    the KV pool can hold them (and up to max_concurrent)
//   ReserveBlocks()  the next forward's KV blocks are taken into account;
//                    when the pool is short the youngest sequence is
//                    preempted (its KV leaves the pool, it resumes later)
//   RunStep()        one batched forward for every runnable sequence
//                    (RunnableBatch: prefill rows of new ones, one decode row
//                    of the others), then per sequence: sample, compress,
//                    stream a chunk (EmitResults, EmitStep), finish the ones
//                    that stopped (Complete)
//   ExchangeGuard()  send the step batch to the guard and apply its
//                    directives (mode, ratio, protected positions, RECOVERY's
//                    rebuild, restart) before the next step; strict (lag 0)
//                    waits for this step's answer, lag 1 applies the previous
//                    step's so the round trip overlaps the step. Overlapped
//                    (lag 0, guard_overlap) waits after the next forward
//                    instead (AwaitOverlapped): the round trip runs beside
//                    the forward, and the answer still lands before that
//                    step's compression and sampling
//
// The KV pool (--kv_cache_bytes) turns compression into capacity. Admission
// reserves each request's projected footprint: the blocks its retained
// tokens need at the end of generation at its requested ratio, so a request
// at ratio 0.75 costs a quarter of an uncompressed one; the prefill's
// uncompressed prompt only has to fit in the blocks free at that step, since
// compression shrinks it before the step ends. A guard directive that
// changes the ratio moves the reservation. Growth past the reservation (SAFE
// stops eviction, RECOVERY restores entries) is met by preemption: the
// youngest runnable sequence by admission order (one not in RECOVERY while
// any such runs) swaps its KV out of the pool and waits; preempted sequences
// resume oldest first and no new request is admitted while any waits, so
// the oldest sequences keep progressing and every request finishes. A request that could not fit
// even in an empty pool is refused at Submit with RESOURCE_EXHAUSTED; nothing fails mid-stream for
// lack of memory unless one sequence alone outgrows the whole pool.
//
// A guard that misses its deadline or is down never fails a request: the
// fail-safe policy holds the last directive or goes SAFE.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "services/engine/engine.h"
#include "services/server/guard_link.h"
#include "services/server/metrics.h"
#include "services/server/stream_events.h"

namespace at {
class Tensor;
}  // namespace at

namespace kvguard::engine {
class LlamaModel;
class Sequence;
struct KvArena;
class Tokenizer;
struct StepResult;
}  // namespace kvguard::engine

namespace kvguard::server {

enum class FailSafePolicy { kHold, kSafe };

// Timing of one decode step, for benchmarks (SchedulerOptions::on_step).
struct StepTiming {
  int64_t batch = 0;     // sequences stepped
  int64_t prefills = 0;  // of which prefilled their prompt this step
  double compute_s = 0;  // forward + sampling + compression + streaming
  double guard_s = 0;    // send + wait for directives (0 when unguarded)
  bool guard_missed = false;
};

// The most steps of reports the server gathers per exchange on the guard's
// say-so (DirectiveBatch.quiet_steps): a bound on how late a directive can be.
inline constexpr int kMaxGuardQuietSteps = 16;

struct SchedulerOptions {
  int max_concurrent = 16;
  int max_queue = 64;
  std::chrono::milliseconds guard_deadline{50};
  int guard_lag = 0;  // 0 = strict, 1 = apply one step later
  // Exchange with the guard every N steps: the guard still reads every step's
  // report, N at a time, and its directives arrive up to N - 1 steps later (at
  // lag 1, one exchange = N steps later still). Every step while a sequence is
  // in its probe (hold-back), so admission restarts are decided as at N = 1.
  // Fewer round trips cost the guard and the server less CPU. The guard may
  // lengthen the interval while its sessions are calm (quiet_steps, at most
  // kMaxGuardQuietSteps).
  int guard_interval = 1;
  // At lag 0: wait for the guard's answer after the next forward rather than
  // before it. Ratio, mode and protection still act on that step (compression
  // and sampling follow the forward); a sequence the answer restarts or sends
  // to RECOVERY drops its row and redoes the step on its new cache. What
  // streams is what strict streams; a dropped row costs that sequence a step.
  bool guard_overlap = false;  // the server's flag defaults to true
  FailSafePolicy fail_safe = FailSafePolicy::kSafe;
  double r_safe = 0.0;  // ratio under the SAFE fail-safe
  int report_top_logprobs = 20;
  bool research_logits = false;  // stream full logits to the guard
  // Guarded requests: the first N tokens are held back from the client so the
  // guard can restart the request at a lower ratio (admission); 0 = stream at once.
  int guard_probe_tokens = 0;
  std::function<void(const StepTiming&)> on_step;  // called on the loop thread
  // The server's KV pool; null = no byte budget (admission by max_concurrent).
  std::shared_ptr<engine::KvArena> kv_arena;
};

// A validated request plus what the server adds.
struct Submission {
  std::string request_id;
  engine::GenerateRequest request;
  bool guarded = false;
  std::string gold_answer;
  std::shared_ptr<ResponseSink> sink;
  std::chrono::steady_clock::time_point arrived;  // set by Submit
  // Set by Submit with a KV pool (admission re-reads them every step).
  int64_t kv_prefill_blocks = 0, kv_projected_blocks = 0;
};

class Scheduler {
 public:
  Scheduler(engine::LlamaModel& model, const engine::Tokenizer* tokenizer, SchedulerOptions options,
            GuardLink* guard, ServerMetrics* metrics);
  ~Scheduler();

  // RESOURCE_EXHAUSTED past max_queue or when the request could not fit in
  // the KV pool even alone; UNAVAILABLE while draining.
  absl::Status Submit(Submission submission);
  // Stops admitting; in-flight sequences run on until `grace` passes, then
  // are cancelled. Returns when the loop has stopped.
  void Drain(std::chrono::milliseconds grace);

  struct Stats {
    int64_t queued = 0, active = 0, steps = 0, fail_safe_steps = 0;
    int64_t preempted = 0, preemptions = 0, resumed = 0;
  };
  [[nodiscard]] Stats stats() const;

 private:
  struct Active;
  struct BlockCost {
    int64_t prefill = 0;    // the uncompressed prompt, held during the prefill step
    int64_t projected = 0;  // retained tokens at the end at the given ratio
  };
  void Loop();
  // --- the step's phases, in order ---
  void ReapCancelled();
  void Admit();
  std::vector<Submission> TakeAdmissible();
  bool Resume();  // the oldest preempted sequence, when the pool has room
  void ReserveBlocks();
  bool RunStep();
  std::vector<Active*> RunnableBatch();
  void EmitResults(const std::vector<Active*>& batch,
                   const std::vector<engine::Sequence*>& sequences, const at::Tensor& host,
                   std::vector<Active*>& stepped);
  void EmitStep(Active& a, const engine::StepResult& r, const float* logits, v1::StepBatch& reports,
                std::vector<Active*>& stepped);
  // --- the KV pool ---
  [[nodiscard]] BlockCost Cost(const engine::GenerateRequest& request, double ratio) const;
  [[nodiscard]] int64_t CommittedBlocks() const;
  [[nodiscard]] int64_t StepBlocks() const;  // what the runnable sequences' next forward takes
  void Preempt(Active& victim);
  void PublishGauges();
  enum class GuardOutcome { kNone, kAnswered, kMissed };
  bool ExchangeDue(const std::vector<Active*>& stepped);
  GuardOutcome ExchangeGuard(std::vector<Active*>& stepped);
  GuardOutcome AwaitOverlapped();  // the answer to the batch sent last step
  GuardOutcome ApplyReply(const std::optional<v1::DirectiveBatch>& reply,
                          std::vector<Active*>& targets,
                          std::chrono::steady_clock::time_point sent);
  void DropStaleRows(std::vector<Active*>& batch, std::vector<engine::Sequence*>& sequences,
                     at::Tensor& host);
  void ApplyDirective(Active& a, const v1::Directive& d);
  absl::Status StartSequence(Active& a);
  void Restart(Active& a, double ratio);
  void Emit(Active& a, TokenEvent event);
  void Flush(Active& a);
  void Send(Active& a, TokenEvent event);
  void ApplyFailSafe(std::vector<Active*>& targets, const char* reason);
  void Complete(Active& a, const absl::Status& status);
  v1::StepReport Report(const Active& a, const engine::StepResult& r, const float* logits) const;

  engine::LlamaModel& model_;
  const engine::Tokenizer* tokenizer_;
  SchedulerOptions options_;
  GuardLink* guard_;
  ServerMetrics* metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Submission> queue_;
  bool draining_ = false;
  bool stop_ = false;
  std::chrono::steady_clock::time_point drain_deadline_;
  Stats stats_;

  // Owned by the loop thread.
  std::vector<std::unique_ptr<Active>> active_;
  v1::StepBatch pending_;  // starts, reports and ends waiting for the next exchange
  int steps_since_exchange_ = 0;
  int guard_quiet_steps_ = 1;  // the latest answer's DirectiveBatch.quiet_steps (1 when none)
  uint64_t batch_id_ = 0;
  uint64_t awaiting_ = 0;  // overlapped: the batch whose answer the next forward waits for
  std::chrono::steady_clock::time_point last_send_;  // of the latest batch (lag-1 round trips)
  uint64_t next_cache_id_ = 0;
  uint64_t next_session_ = 0;  // guard session keys are the server's, not the client's ids
  uint64_t next_order_ = 0;    // admission / resumption order: the youngest is preempted first
  std::thread thread_;
};

}  // namespace kvguard::server
