#include "services/server/scheduler.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressors/cache_compression.h"
#include "guard_sidecar/catastrophe.h"
#include "proto/kvguard/v1/mode_name.h"
#include "services/engine/kv_layer_store.h"
#include "services/engine/llama_model.h"
#include "services/engine/sequence.h"
#include "services/server/step_report.h"
#include "services/server/wire.h"

namespace kvguard::server {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Metric labels and mode_steps keys are std::string.
std::string ModeLabel(v1::Mode mode) { return std::string(v1::ModeName(mode)); }

}  // namespace

struct Scheduler::Active {
  Submission sub;
  std::string
      session_id;  // the guard's key: "s<N>" (server-assigned), "#restart" appended after a restart
  std::unique_ptr<engine::Sequence> seq;
  // Chunks of the first guard_probe_tokens steps, not yet streamed: a restart
  // discards them, the client never sees them.
  std::vector<TokenEvent> held;
  bool holding = false;
  bool first_sent = false;  // the client has its first token (TTFT is measured then)
  uint64_t cache_id = 0;
  uint64_t cache_version = 0;
  v1::Mode mode = v1::MODE_NORMAL;
  float hazard = 0;
  std::map<std::string, uint32_t> mode_steps;
  uint32_t fail_safe_events = 0;
  Clock::time_point admitted, last_token;
  bool done = false;
  int64_t reserved_blocks = 0;  // projected footprint at the ratio in force (admission)
  uint64_t order = 0;           // admission order: the youngest is preempted first
  [[nodiscard]] bool runnable() const { return !done && seq && !seq->preempted(); }
};

Scheduler::Scheduler(engine::LlamaModel& model, const engine::Tokenizer* tokenizer,
                     SchedulerOptions options, GuardLink* guard, ServerMetrics* metrics)
    : model_(model), tokenizer_(tokenizer), options_(options), guard_(guard), metrics_(metrics) {
  if (metrics_) metrics_->QueueCapacity(options_.max_queue);
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Drain(std::chrono::milliseconds(0)); }

absl::Status Scheduler::Submit(Submission submission) {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) {
    if (metrics_) metrics_->RequestRejected("draining");
    return absl::UnavailableError("server is shutting down");
  }
  if (static_cast<int>(queue_.size()) >= options_.max_queue) {
    if (metrics_) metrics_->RequestRejected("queue_full");
    return absl::ResourceExhaustedError(
        absl::StrCat("queue is full (", options_.max_queue, " requests waiting); retry later"));
  }
  if (options_.kv_arena != nullptr) {
    const engine::KvBlockPool& pool = *options_.kv_arena->pool;
    const BlockCost cost = Cost(submission.request, submission.request.compression.ratio);
    if (std::max(cost.prefill, cost.projected) > pool.total_blocks()) {
      if (metrics_) metrics_->RequestRejected("kv_pool_too_small");
      return absl::ResourceExhaustedError(absl::StrCat(
          "the request needs ", std::max(cost.prefill, cost.projected) * pool.block_bytes(),
          " bytes of KV cache (", submission.request.prompt_ids.size(), " prompt tokens, up to ",
          submission.request.max_new_tokens, " new); the server's pool holds ",
          pool.total_bytes()));
    }
    submission.kv_prefill_blocks = cost.prefill;
    submission.kv_projected_blocks = cost.projected;
  }
  submission.arrived = Clock::now();
  queue_.push_back(std::move(submission));
  cv_.notify_all();
  return absl::OkStatus();
}

void Scheduler::Drain(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!draining_) {
      draining_ = true;
      drain_deadline_ = Clock::now() + grace;
    }
    // Requests still waiting never started: refuse them now.
    for (Submission& s : queue_) s.sink->Finish(absl::UnavailableError("server is shutting down"));
    queue_.clear();
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

Scheduler::Stats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Scheduler::Loop() {
  c10::InferenceMode inference;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(100),
                   [&] { return !queue_.empty() || !active_.empty() || draining_; });
      if (draining_ && Clock::now() >= drain_deadline_) {
        for (auto& a : active_) {
          if (a->done) continue;  // completed this step, not yet reaped
          a->seq->Cancel();
          a->sub.sink->Finish(
              absl::UnavailableError("server shut down before the generation finished"));
          a->done = true;
        }
        active_.clear();
      }
      if (draining_ && queue_.empty() && active_.empty()) break;
    }
    ReapCancelled();
    Admit();
    ReserveBlocks();
    RunStep();
  }
}

void Scheduler::ReapCancelled() {
  for (auto& a : active_) {
    if (!a->done && a->sub.sink->Cancelled()) {
      a->seq->Cancel();  // frees the KV at once
      Complete(*a, absl::CancelledError("cancelled by the client"));
    }
  }
  std::erase_if(active_, [](const auto& a) { return a->done; });
}

// --- the KV pool ---

Scheduler::BlockCost Scheduler::Cost(const engine::GenerateRequest& r, double ratio) const {
  const engine::KvBlockPool& pool = *options_.kv_arena->pool;
  const engine::ModelConfig& c = model_.config();
  const int64_t prompt = static_cast<int64_t>(r.prompt_ids.size());
  const int64_t total =
      prompt + std::clamp<int64_t>(r.max_new_tokens, 0, c.max_position_embeddings - prompt);
  // Validated at the edge; a spec the registry refuses reserves everything.
  const int64_t retained = compress::ProjectedRetained(r.compression, ratio, total).value_or(total);
  return {.prefill = c.num_layers * pool.BlocksForTokens(prompt),
          .projected = c.num_layers * pool.BlocksForTokens(retained)};
}

int64_t Scheduler::CommittedBlocks() const {
  int64_t committed = 0;
  for (const auto& a : active_) {
    if (a->done) continue;
    committed += std::max(a->reserved_blocks, a->seq->preempted() ? a->seq->cache().BlocksToSwapIn()
                                                                  : a->seq->cache().BlocksHeld());
  }
  return committed;
}

int64_t Scheduler::StepBlocks() const {
  int64_t need = 0;
  for (const auto& a : active_) {
    if (a->runnable()) need += a->seq->BlocksForNextStep();
  }
  return need;
}

void Scheduler::Preempt(Active& victim) {
  victim.seq->Preempt();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.preemptions;
  }
  if (metrics_) metrics_->Preempted();
}

// Makes the next forward fit in the pool: preempts the youngest runnable
// sequence (not in RECOVERY, unless only such remain) until it does. One
// sequence left that still does not fit has outgrown the whole pool (SAFE
// stopped its eviction): it ends with RESOURCE_EXHAUSTED.
void Scheduler::ReserveBlocks() {
  if (options_.kv_arena == nullptr) return;
  const engine::KvBlockPool& pool = *options_.kv_arena->pool;
  while (StepBlocks() > pool.free_blocks()) {
    Active* victim = nullptr;
    int runnable = 0;
    for (auto& a : active_) {
      if (!a->runnable()) continue;
      ++runnable;
      // Not in RECOVERY first (it is restoring what the guard needs), then the youngest.
      auto rank = [](const Active& x) { return std::pair(x.mode != v1::MODE_RECOVERY, x.order); };
      if (victim == nullptr || rank(*a) > rank(*victim)) victim = a.get();
    }
    if (victim == nullptr) return;
    if (runnable == 1) {
      Complete(*victim, absl::ResourceExhaustedError(
                            "the sequence outgrew the server's whole KV pool (compression was "
                            "paused by the guard); raise --kv_cache_bytes"));
      continue;
    }
    Preempt(*victim);
  }
}

// The oldest preempted sequence comes back when its blocks and its next
// step fit in what the runnable sequences leave free.
bool Scheduler::Resume() {
  Active* oldest = nullptr;
  for (auto& a : active_) {
    if (!a->done && a->seq->preempted() && (oldest == nullptr || a->order < oldest->order))
      oldest = a.get();
  }
  if (oldest == nullptr) return false;
  const engine::KvBlockPool& pool = *options_.kv_arena->pool;
  const int64_t need =
      oldest->seq->cache().BlocksToSwapIn() + pool.BlocksForTokens(1) * model_.config().num_layers;
  if (StepBlocks() + need > pool.free_blocks()) return false;
  // `order` stays the admission order: a resumed sequence is not the next
  // victim, so the oldest sequences always progress.
  if (!oldest->seq->Resume().ok()) return false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.resumed;
  }
  if (metrics_) metrics_->Admitted("resumed");
  return true;
}

void Scheduler::Admit() {
  if (options_.kv_arena != nullptr) {
    while (Resume()) {
    }
  }
  for (Submission& s : TakeAdmissible()) {
    auto a = std::make_unique<Active>();
    a->sub = std::move(s);
    a->session_id = absl::StrCat("s", ++next_session_);
    a->holding = a->sub.guarded && options_.guard_probe_tokens > 0;
    if (absl::Status st = StartSequence(*a); !st.ok()) {
      a->sub.sink->Finish(st);
      continue;
    }
    a->admitted = a->last_token = Clock::now();
    a->order = ++next_order_;
    if (metrics_) {
      metrics_->Admitted("new");
      metrics_->QueueTime(Seconds(a->admitted - a->sub.arrived));
    }
    active_.push_back(std::move(a));
  }
}

// Takes queued requests first come, first served while they fit: under
// max_concurrent and, with a pool, in the blocks left for the steady state
// (the pool minus every reservation) and for the prefill step (free blocks
// minus what the runnable sequences' next forward takes). The head waits
// rather than being overtaken, and nothing new starts while a preempted
// sequence waits.
std::vector<Submission> Scheduler::TakeAdmissible() {
  const bool pooled = options_.kv_arena != nullptr;
  bool preempted_waiting = false;
  for (const auto& a : active_) preempted_waiting |= !a->done && a->seq->preempted();
  int64_t steady = 0, transient = 0;
  if (pooled) {
    const engine::KvBlockPool& pool = *options_.kv_arena->pool;
    steady = pool.total_blocks() - CommittedBlocks();
    transient = pool.free_blocks() - StepBlocks();
  }
  std::vector<Submission> admitted;
  std::string_view waiting_on;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!queue_.empty()) {
      if (static_cast<int>(active_.size() + admitted.size()) >= options_.max_concurrent) {
        waiting_on = "max_concurrent";
        break;
      }
      if (pooled) {
        const Submission& head = queue_.front();
        if (preempted_waiting || head.kv_projected_blocks > steady ||
            head.kv_prefill_blocks > transient) {
          waiting_on = preempted_waiting ? "preempted_first" : "kv_blocks";
          break;
        }
        steady -= head.kv_projected_blocks;
        transient -= head.kv_prefill_blocks;
      }
      admitted.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  if (metrics_) {
    for (const char* reason : {"max_concurrent", "kv_blocks", "preempted_first"}) {
      metrics_->Waiting(reason, reason == waiting_on ? stats().queued : 0);
    }
  }
  return admitted;
}

absl::Status Scheduler::StartSequence(Active& a) {
  const engine::GenerateRequest& request = a.sub.request;
  engine::SequenceOptions so{
      .report_top_logprobs = a.sub.guarded ? options_.report_top_logprobs : 0,
      // The guard ranks evicted positions by the attention they had
      // received and pins the top ones after RECOVERY (never evicted again).
      .gather_attention = a.sub.guarded,
      .kv_arena = options_.kv_arena};
  KVG_ASSIGN_OR_RETURN(a.seq, engine::Sequence::Create(model_, tokenizer_, request, so));
  if (options_.kv_arena != nullptr)
    a.reserved_blocks = Cost(request, request.compression.ratio).projected;
  a.cache_id = ++next_cache_id_;
  a.cache_version = 0;
  if (a.sub.guarded) {
    v1::SessionStart* start = pending_.add_starts();
    start->set_session_id(a.session_id);
    start->set_request_id(a.sub.request_id);
    start->set_compressor(request.compression.compressor);
    start->set_requested_ratio(request.compression.ratio);
    start->set_prompt_tokens(static_cast<uint32_t>(request.prompt_ids.size()));
    start->set_max_new_tokens(static_cast<uint32_t>(request.max_new_tokens));
    start->set_holdback_tokens(a.holding ? static_cast<uint32_t>(options_.guard_probe_tokens) : 0);
  }
  return absl::OkStatus();
}

// Admission: the guard saw a high hazard while every token was still held
// back. End the guard session, drop the held tokens and the KV, and prefill
// the prompt again at the lower ratio as a new session; the client's stream
// starts with the new sequence's tokens.
void Scheduler::Restart(Active& a, double ratio) {
  v1::SessionEnd* end = pending_.add_ends();
  end->set_session_id(a.session_id);
  end->set_finish_reason(v1::FINISH_REASON_UNSPECIFIED);
  a.held.clear();
  a.sub.request.compression.ratio = ratio;
  a.session_id += "#restart";
  a.holding = false;  // at most one restart: stream from now on
  a.mode = v1::MODE_NORMAL;
  ++a.mode_steps["restart"];
  if (absl::Status st = StartSequence(a); !st.ok()) Complete(a, st);
  if (metrics_) metrics_->Restarted();
}

void Scheduler::Emit(Active& a, TokenEvent event) {
  if (a.holding && event.step < static_cast<uint32_t>(options_.guard_probe_tokens)) {
    a.held.push_back(std::move(event));
    return;
  }
  Flush(a);
  Send(a, std::move(event));
}

void Scheduler::Flush(Active& a) {
  for (TokenEvent& e : a.held) Send(a, std::move(e));
  a.held.clear();
  a.holding = false;
}

void Scheduler::Send(Active& a, TokenEvent event) {
  if (!a.first_sent) {
    a.first_sent = true;
    if (metrics_) metrics_->TimeToFirstToken(Seconds(Clock::now() - a.sub.arrived));
  }
  a.sub.sink->Token(std::move(event));
}

void Scheduler::PublishGauges() {
  if (metrics_ == nullptr) return;
  int64_t held = 0, preempted = 0;
  for (const auto& a : active_) {
    if (a->done) continue;
    held += a->seq->cache().Stats().bytes;
    preempted += a->seq->preempted() ? 1 : 0;
  }
  metrics_->Queue(stats().queued, static_cast<int64_t>(active_.size()) - preempted);
  metrics_->KvBytes(held);
  if (options_.kv_arena != nullptr) {
    const engine::KvBlockPool& pool = *options_.kv_arena->pool;
    metrics_->KvPool(pool.total_bytes(), pool.used_blocks() * pool.block_bytes(),
                     pool.free_blocks(), preempted);
  }
}

// The runnable sequences (preempted ones wait), counted for Stats().
std::vector<Scheduler::Active*> Scheduler::RunnableBatch() {
  std::vector<Active*> batch;
  for (auto& a : active_) {
    if (a->runnable()) batch.push_back(a.get());
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.active = static_cast<int64_t>(batch.size());
  stats_.preempted = static_cast<int64_t>(active_.size() - batch.size());
  return batch;
}

// Per sequence: sample, compress and stream its row (EmitStep), or end it
// with its error; the step reports join the batch for the guard.
void Scheduler::EmitResults(const std::vector<Active*>& batch,
                            const std::vector<engine::Sequence*>& sequences, const at::Tensor& host,
                            std::vector<Active*>& stepped) {
  auto results = engine::AfterForwardAll(sequences, host.data_ptr<float>(), host.size(1));
  v1::StepBatch reports;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!results[i].ok()) {
      Complete(*batch[i], results[i].status());
      continue;
    }
    EmitStep(*batch[i], *results[i], host[static_cast<int64_t>(i)].data_ptr<float>(), reports,
             stepped);
  }
  for (auto& r : *reports.mutable_reports()) *pending_.add_reports() = std::move(r);
}

bool Scheduler::RunStep() {
  PublishGauges();
  std::vector<Active*> batch = RunnableBatch();
  if (batch.empty()) {
    if (awaiting_ != 0) AwaitOverlapped();  // nothing to overlap with
    return false;
  }
  const auto t0 = Clock::now();
  std::vector<engine::ForwardItem> items;
  std::vector<engine::Sequence*> sequences;
  int64_t prefills = 0;
  for (Active* a : batch) {
    items.push_back(*a->seq->NextForward());
    sequences.push_back(a->seq.get());
    prefills += items.back().tokens.size() > 1 ? 1 : 0;
  }
  auto logits = model_.Forward(items);
  if (!logits.ok()) {
    for (Active* a : batch) Complete(*a, logits.status());
    return false;
  }
  at::Tensor host = logits->to(at::kCPU).contiguous();
  // Overlapped: the directives answering the last exchange, which the guard
  // computed while this forward ran, apply before this step's compression.
  Clock::duration awaited{};
  GuardOutcome guard = GuardOutcome::kNone;
  if (awaiting_ != 0) {
    const auto w = Clock::now();
    guard = AwaitOverlapped();
    awaited = Clock::now() - w;
    DropStaleRows(batch, sequences, host);
  }
  std::vector<Active*> stepped;
  EmitResults(batch, sequences, host, stepped);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
  }
  const auto t1 = Clock::now();
  if (metrics_) metrics_->DecodeStep(Seconds(t1 - t0), static_cast<int64_t>(items.size()));
  if (ExchangeDue(stepped)) {
    const GuardOutcome exchanged = ExchangeGuard(stepped);
    if (exchanged != GuardOutcome::kNone) guard = exchanged;
  }
  if (options_.on_step) {
    options_.on_step({.batch = static_cast<int64_t>(items.size()),
                      .prefills = prefills,
                      .compute_s = Seconds(t1 - t0 - awaited),
                      .guard_s = Seconds(Clock::now() - t1 + awaited),
                      .guard_missed = guard == GuardOutcome::kMissed});
  }
  return true;
}

// Rows of this forward that the overlapped directives made stale are dropped:
// a restarted sequence has a new Sequence (its prompt prefills next step), and
// one sent to RECOVERY redoes the step on its rebuilt cache, as strict would.
void Scheduler::DropStaleRows(std::vector<Active*>& batch,
                              std::vector<engine::Sequence*>& sequences, at::Tensor& host) {
  std::vector<int64_t> kept;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i]->done && batch[i]->seq.get() == sequences[i] && !sequences[i]->rebuilding())
      kept.push_back(static_cast<int64_t>(i));
  }
  if (kept.size() == batch.size()) return;
  std::vector<Active*> b;
  std::vector<engine::Sequence*> s;
  for (int64_t i : kept) {
    b.push_back(batch[i]);
    s.push_back(sequences[i]);
  }
  host = host.index_select(0, at::tensor(kept, at::kLong)).contiguous();
  batch = std::move(b);
  sequences = std::move(s);
}

// One sequence's step after the forward: metrics, the streamed chunk, the
// guard's report, and completion.
void Scheduler::EmitStep(Active& a, const engine::StepResult& r, const float* logits,
                         v1::StepBatch& reports, std::vector<Active*>& stepped) {
  const engine::ModelConfig& c = model_.config();
  const int64_t slots_per_token = std::max<int64_t>(1, c.num_layers * c.num_kv_heads);
  const auto now = Clock::now();
  if (metrics_) {
    // TTFT is recorded when the first chunk really leaves (Send), after any hold-back.
    if (r.step > 0) metrics_->InterTokenLatency(Seconds(now - a.last_token));
    metrics_->RetainedFraction(r.kv.total_tokens ? double(r.kv.retained_slots) /
                                                       double(r.kv.total_tokens * slots_per_token)
                                                 : 1.0);
    metrics_->Mode(ModeLabel(a.mode));
    if (a.sub.guarded) metrics_->Hazard(a.hazard);
  }
  a.last_token = now;
  ++a.mode_steps[ModeLabel(a.mode)];
  if (!r.evicted_positions.empty()) ++a.cache_version;
  Emit(a, {.token_id = r.token.id,
           .text_delta = r.text_delta,
           .logprobs = a.sub.request.sampling.logprobs > 0 ? std::optional(r.token) : std::nullopt,
           .step = static_cast<uint32_t>(r.step),
           .mode = a.mode,
           .hazard = a.hazard,
           .ratio = r.ratio,
           .kv_bytes = r.kv.bytes,
           .retained_tokens = r.kv.retained_slots / slots_per_token});
  if (a.sub.guarded)
    *reports.add_reports() = Report(a, r, options_.research_logits ? logits : nullptr);
  if (r.finished)
    Complete(a, absl::OkStatus());
  else
    stepped.push_back(&a);
}

v1::StepReport Scheduler::Report(const Active& a, const engine::StepResult& r,
                                 const float* logits) const {
  return MakeStepReport(r, model_.config(), tokenizer_,
                        {.session_id = a.session_id,
                         .cache_id = a.cache_id,
                         .cache_version = a.cache_version,
                         .mode = a.mode,
                         .logits = logits});
}

// Every guard_interval steps, or every quiet_steps while the guard says its
// sessions are calm; every step while a sequence is held back for its probe;
// and when nothing is left running (the last reports and ends go out at once
// instead of waiting for new work).
bool Scheduler::ExchangeDue(const std::vector<Active*>& stepped) {
  const int interval = std::max(options_.guard_interval, guard_quiet_steps_);
  if (++steps_since_exchange_ < interval && !stepped.empty() &&
      std::none_of(active_.begin(), active_.end(), [](const auto& a) { return a->holding; })) {
    return false;
  }
  steps_since_exchange_ = 0;
  return true;
}

Scheduler::GuardOutcome Scheduler::ExchangeGuard(std::vector<Active*>& stepped) {
  if (guard_ == nullptr) return GuardOutcome::kNone;
  if (metrics_) metrics_->GuardConnected(guard_->connected());
  if (pending_.starts_size() == 0 && pending_.reports_size() == 0 && pending_.ends_size() == 0) {
    return GuardOutcome::kNone;
  }
  pending_.set_batch_id(++batch_id_);
  const uint64_t sent_id = batch_id_;
  const auto t0 = Clock::now();
  const auto previous_send = last_send_;
  last_send_ = t0;
  const bool had_reports = pending_.reports_size() > 0;
  guard_->Send(std::exchange(pending_, v1::StepBatch()));
  if (!had_reports || stepped.empty()) return GuardOutcome::kNone;
  if (options_.guard_lag == 0 && options_.guard_overlap) {
    awaiting_ = sent_id;  // awaited after the next forward (AwaitOverlapped)
    return GuardOutcome::kNone;
  }
  const uint64_t wait_id = options_.guard_lag > 0 ? sent_id - 1 : sent_id;
  if (wait_id == 0) return GuardOutcome::kNone;
  auto reply = guard_->Await(wait_id, t0 + options_.guard_deadline);
  // From the answered batch's send to its directives being applied: at lag 1
  // that batch left one step earlier (an upper bound on the network round trip).
  return ApplyReply(reply, stepped, options_.guard_lag > 0 ? previous_send : t0);
}

// The sequences are looked up again by session: between the exchange and
// now, some may have been cancelled (and freed) or preempted.
Scheduler::GuardOutcome Scheduler::AwaitOverlapped() {
  const uint64_t id = std::exchange(awaiting_, 0);
  auto reply = guard_->Await(id, last_send_ + options_.guard_deadline);
  std::vector<Active*> live;
  for (auto& a : active_) {
    if (!a->done && a->seq && a->sub.guarded) live.push_back(a.get());
  }
  return ApplyReply(reply, live, last_send_);
}

Scheduler::GuardOutcome Scheduler::ApplyReply(const std::optional<v1::DirectiveBatch>& reply,
                                              std::vector<Active*>& targets,
                                              Clock::time_point sent) {
  if (!reply) {
    guard_quiet_steps_ = 1;
    ApplyFailSafe(targets, guard_->connected() ? "deadline" : "disconnected");
    return GuardOutcome::kMissed;
  }
  guard_quiet_steps_ =
      static_cast<int>(std::clamp<uint32_t>(reply->quiet_steps(), 1, kMaxGuardQuietSteps));
  if (metrics_) metrics_->GuardRoundTrip(Seconds(Clock::now() - sent));
  std::map<std::string, Active*> by_id;
  for (Active* a : targets) by_id[a->session_id] = a;
  for (const v1::Directive& d : reply->directives()) {
    auto it = by_id.find(d.session_id());
    if (it != by_id.end()) ApplyDirective(*it->second, d);
  }
  return GuardOutcome::kAnswered;
}

void Scheduler::ApplyDirective(Active& a, const v1::Directive& d) {
  if (d.has_restart_ratio() && a.holding && d.restart_ratio().value() >= 0 &&
      d.restart_ratio().value() < 1) {
    Restart(a, d.restart_ratio().value());
    return;
  }
  if (d.release_held() && a.holding) Flush(a);  // the guard will not restart it
  if (d.mode() != a.mode && d.mode() != v1::MODE_UNSPECIFIED) {
    if (metrics_) metrics_->ModeTransition(ModeLabel(a.mode), ModeLabel(d.mode()));
    a.mode = d.mode();
  }
  a.hazard = d.hazard();
  const double ratio = d.has_target_ratio() ? d.target_ratio().value() : -1;
  // Most directives repeat the ratio in force: only a change moves the budget.
  if (ratio >= 0 && ratio < 1 && ratio != a.seq->ratio() && a.seq->SetRatio(ratio).ok() &&
      options_.kv_arena != nullptr) {
    a.reserved_blocks = Cost(a.sub.request, ratio).projected;  // the budget moves with the ratio
  }
  a.seq->SetProtected(
      std::set<int32_t>(d.protect_positions().begin(), d.protect_positions().end()));
  a.seq->SetEvictionPaused(a.mode == v1::MODE_SAFE || a.mode == v1::MODE_RECOVERY);
  // RECOVERY: the guard names evicted positions it wants back; the server
  // rebuilds the whole cache with the next forward. Restoring just those into
  // a per-head compressed cache took nearly every evicted position anyway
  // (each layer's heads must hold equal counts), cost ~4x a fresh prefill
  // against the compressed cache, and was not exact.
  if (d.recompute_positions_size() > 0) {
    auto restored = a.seq->Rebuild();
    if (restored.ok() && *restored > 0) {
      ++a.cache_version;
      if (metrics_) metrics_->Recovered(*restored);
    }
  }
}

void Scheduler::ApplyFailSafe(std::vector<Active*>& targets, const char* reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.fail_safe_steps;
  }
  if (metrics_) metrics_->FailSafe(reason);
  for (Active* a : targets) {
    if (!a->sub.guarded) continue;  // a static request never hears the guard
    ++a->fail_safe_events;
    if (options_.fail_safe == FailSafePolicy::kHold) continue;
    if (a->mode != v1::MODE_SAFE && metrics_) metrics_->ModeTransition(ModeLabel(a->mode), "safe");
    a->mode = v1::MODE_SAFE;
    a->seq->SetEvictionPaused(true);
    if (a->seq->ratio() == options_.r_safe) continue;  // already SAFE: the budget stands
    (void)a->seq->SetRatio(options_.r_safe);
    if (options_.kv_arena != nullptr)
      a->reserved_blocks = Cost(a->sub.request, options_.r_safe).projected;
  }
}

void Scheduler::Complete(Active& a, const absl::Status& status) {
  if (a.done) return;
  a.done = true;
  engine::GenerateResult result = a.seq->Result();
  if (a.sub.guarded) {
    v1::SessionEnd* end = pending_.add_ends();
    end->set_session_id(a.session_id);
    end->set_finish_reason(ToWire(result.finish_reason));
  }
  if (!status.ok()) {
    a.held.clear();
    if (metrics_) metrics_->RequestFinished(absl::StatusCodeToString(status.code()));
    a.sub.sink->Finish(status);
    a.seq.reset();
    return;
  }
  std::optional<int64_t> gold;
  int64_t g;
  if (!a.sub.gold_answer.empty() && absl::SimpleAtoi(a.sub.gold_answer, &g)) gold = g;
  const auto outcome = guard::Classify(result.output_ids, result.text,
                                       result.finish_reason == engine::FinishReason::kLength,
                                       result.finish_reason == engine::FinishReason::kEos, gold);
  const int64_t uncompressed = a.seq->cache().UncompressedBytes();
  CompletionEvent done{.finish_reason = result.finish_reason,
                       .prompt_tokens = static_cast<int64_t>(result.prompt_ids.size()),
                       .completion_tokens = static_cast<int64_t>(result.output_ids.size()),
                       .kv_bytes = result.kv_bytes,
                       .kv_bytes_saved = std::max<int64_t>(0, uncompressed - result.kv_bytes),
                       .outcome = outcome,
                       .text = result.text,
                       .time_to_first_token_ms = 1000.0 * a.seq->time_to_first_token_s(),
                       .total_ms = 1000.0 * Seconds(Clock::now() - a.sub.arrived),
                       .mode_steps = a.mode_steps,
                       .fail_safe_events = a.fail_safe_events};
  // Metrics first: a client that sees its stream end must see them counted.
  Flush(a);  // a generation that ended within the hold-back
  if (metrics_) {
    metrics_->RequestFinished("OK");
    metrics_->Tokens(static_cast<int64_t>(result.prompt_ids.size()),
                     static_cast<int64_t>(result.output_ids.size()));
    metrics_->RequestDuration(Seconds(Clock::now() - a.sub.arrived));
    metrics_->Generation(a.sub.request.compression.compressor, a.sub.guarded, outcome.looped,
                         outcome.non_terminated, outcome.wrong_answer);
    metrics_->KvBytesSaved(std::max<int64_t>(0, uncompressed - result.kv_bytes));
  }
  a.sub.sink->Complete(std::move(done));
  a.sub.sink->Finish(absl::OkStatus());
  a.seq.reset();  // frees the KV
}

}  // namespace kvguard::server
