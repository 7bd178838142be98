#include "services/server/metrics.h"

#include <iostream>

namespace kvguard::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

Histogram::BucketBoundaries Latency() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}
Histogram::BucketBoundaries Unit() {
  return {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
}

}  // namespace

ServerMetrics::ServerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  requests_ = &BuildCounter()
                   .Name("kvguard_requests_total")
                   .Help("Generate requests by final status")
                   .Register(r);
  rejected_ = &BuildCounter()
                   .Name("kvguard_requests_rejected_total")
                   .Help("Requests refused before running, by reason")
                   .Register(r);
  prompt_tokens_ = &BuildCounter()
                        .Name("kvguard_prompt_tokens_total")
                        .Help("Prompt tokens prefilled")
                        .Register(r)
                        .Add({});
  generated_tokens_ = &BuildCounter()
                           .Name("kvguard_generated_tokens_total")
                           .Help("Tokens generated")
                           .Register(r)
                           .Add({});
  ttft_ = &BuildHistogram()
               .Name("kvguard_time_to_first_token_seconds")
               .Help("Time from arrival (queue included) to the first token")
               .Register(r)
               .Add({}, Latency());
  itl_ = &BuildHistogram()
              .Name("kvguard_inter_token_latency_seconds")
              .Help("Time between consecutive tokens of a stream")
              .Register(r)
              .Add({}, Latency());
  duration_ = &BuildHistogram()
                   .Name("kvguard_request_duration_seconds")
                   .Help("End-to-end request time, from arrival")
                   .Register(r)
                   .Add({}, Latency());
  step_ = &BuildHistogram()
               .Name("kvguard_decode_step_seconds")
               .Help("One batched decode step incl. sampling and compression")
               .Register(r)
               .Add({}, Latency());
  batch_ = &BuildHistogram()
                .Name("kvguard_batch_size")
                .Help("Sequences per decode step")
                .Register(r)
                .Add({}, Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64});
  queue_depth_ = &BuildGauge()
                      .Name("kvguard_queue_depth")
                      .Help("Requests waiting for admission")
                      .Register(r)
                      .Add({});
  active_ = &BuildGauge()
                 .Name("kvguard_active_sequences")
                 .Help("Sequences being decoded")
                 .Register(r)
                 .Add({});
  kv_bytes_ = &BuildGauge()
                   .Name("kvguard_kv_bytes")
                   .Help("KV-cache bytes held by active sequences")
                   .Register(r)
                   .Add({});
  retained_ = &BuildHistogram()
                   .Name("kvguard_kv_retained_fraction")
                   .Help("Retained / total KV entries per sequence step")
                   .Register(r)
                   .Add({}, Unit());
  mode_steps_ = &BuildCounter()
                     .Name("kvguard_mode_steps_total")
                     .Help("Sequence steps spent in each guard mode")
                     .Register(r);
  transitions_ = &BuildCounter()
                      .Name("kvguard_mode_transitions_total")
                      .Help("Guard mode changes applied")
                      .Register(r);
  hazard_ = &BuildHistogram()
                 .Name("kvguard_hazard")
                 .Help("Hazard reported by the guard per sequence step")
                 .Register(r)
                 .Add({}, Unit());
  guard_rtt_ = &BuildHistogram()
                    .Name("kvguard_guard_round_trip_seconds")
                    .Help(
                        "Send of a step batch to its directives being applied (lag 1: sent one "
                        "step earlier)")
                    .Register(r)
                    .Add({}, Latency());
  fail_safe_ = &BuildCounter()
                    .Name("kvguard_guard_fail_safe_total")
                    .Help("Steps run under the fail-safe policy, by reason")
                    .Register(r);
  guard_connected_ = &BuildGauge()
                          .Name("kvguard_guard_connected")
                          .Help("1 while the guard stream is up")
                          .Register(r)
                          .Add({});
  generations_ = &BuildCounter()
                      .Name("kvguard_generations_total")
                      .Help("Finished generations by compressor and guard")
                      .Register(r);
  catastrophes_ = &BuildCounter()
                       .Name("kvguard_catastrophes_total")
                       .Help(
                           "Catastrophe flags of finished generations by kind and compressor; one "
                           "generation can count under several kinds (a loop that runs to the "
                           "token limit is loop and non_termination): for CFR use "
                           "kvguard_catastrophic_generations_total")
                       .Register(r);
  catastrophic_ = &BuildCounter()
                       .Name("kvguard_catastrophic_generations_total")
                       .Help(
                           "Finished generations that looped or did not terminate, each counted "
                           "once, by compressor, guard and primary cause (loop before "
                           "non_termination)")
                       .Register(r);
  kv_saved_ = &BuildCounter()
                   .Name("kvguard_kv_bytes_saved_total")
                   .Help("KV bytes saved at completion vs uncompressed")
                   .Register(r)
                   .Add({});
  recovered_ = &BuildCounter()
                    .Name("kvguard_recovered_positions_total")
                    .Help("KV positions recomputed by RECOVERY")
                    .Register(r)
                    .Add({});
  restarts_ = &BuildCounter()
                   .Name("kvguard_guard_restarts_total")
                   .Help("Guarded requests restarted at a lower ratio within the probe (admission)")
                   .Register(r)
                   .Add({});
  // Touch the labelled series the dashboards and alerts query, so they exist from the start.
  for (const char* m : {"normal", "alert", "safe", "recovery"}) mode_steps_->Add({{"mode", m}});
  for (const char* reason : {"deadline", "disconnected"}) fail_safe_->Add({{"reason", reason}});
  for (const char* reason : {"queue_full", "invalid_argument", "draining"})
    rejected_->Add({{"reason", reason}});
  pool_bytes_ = &BuildGauge()
                     .Name("kvguard_kv_pool_bytes")
                     .Help("Bytes of the server's KV pool (--kv_cache_bytes); 0 without a pool")
                     .Register(r)
                     .Add({});
  pool_used_bytes_ = &BuildGauge()
                          .Name("kvguard_kv_pool_used_bytes")
                          .Help("Bytes of the KV pool in blocks held by sequences")
                          .Register(r)
                          .Add({});
  pool_free_blocks_ = &BuildGauge()
                           .Name("kvguard_kv_pool_free_blocks")
                           .Help("Free blocks of the KV pool")
                           .Register(r)
                           .Add({});
  preempted_ = &BuildGauge()
                    .Name("kvguard_preempted_sequences")
                    .Help("Sequences preempted (KV swapped out of the pool), waiting to resume")
                    .Register(r)
                    .Add({});
  waiting_ = &BuildGauge()
                  .Name("kvguard_requests_waiting")
                  .Help("Queued requests, by what the head of the queue waits for")
                  .Register(r);
  admitted_ = &BuildCounter()
                   .Name("kvguard_admissions_total")
                   .Help("Sequences admitted (new) or resumed after preemption (resumed)")
                   .Register(r);
  preemptions_ = &BuildCounter()
                      .Name("kvguard_preemptions_total")
                      .Help("Sequences preempted because the KV pool ran short")
                      .Register(r)
                      .Add({});
  queue_capacity_ =
      &BuildGauge()
           .Name("kvguard_queue_capacity")
           .Help("Requests the admission queue holds (--max_queue); the queue alert divides by it")
           .Register(r)
           .Add({});
  queue_time_ = &BuildHistogram()
                     .Name("kvguard_queue_time_seconds")
                     .Help("Time from arrival to admission")
                     .Register(r)
                     .Add({}, Latency());
}

bool ServerMetrics::Serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
    exposer_->RegisterCollectable(registry_);
    return true;
  } catch (const std::exception& e) {
    std::cerr << "metrics: " << e.what() << "\n";
    return false;
  }
}

void ServerMetrics::RequestFinished(const std::string& status) {
  requests_->Add({{"status", status}}).Increment();
}
void ServerMetrics::RequestRejected(const std::string& reason) {
  rejected_->Add({{"reason", reason}}).Increment();
}

void ServerMetrics::Tokens(int64_t prompt, int64_t completion) {
  prompt_tokens_->Increment(static_cast<double>(prompt));
  generated_tokens_->Increment(static_cast<double>(completion));
}

void ServerMetrics::DecodeStep(double seconds, int64_t batch_size) {
  step_->Observe(seconds);
  batch_->Observe(static_cast<double>(batch_size));
}

void ServerMetrics::Queue(int64_t queued, int64_t active) {
  queue_depth_->Set(static_cast<double>(queued));
  active_->Set(static_cast<double>(active));
}

void ServerMetrics::ModeTransition(const std::string& from, const std::string& to) {
  transitions_->Add({{"from", from}, {"to", to}}).Increment();
}

void ServerMetrics::Generation(const std::string& compressor, bool guarded, bool loop,
                               bool non_terminated, bool wrong_answer) {
  const std::string c = compressor.empty() ? "none" : compressor;
  const std::string g = guarded ? "true" : "false";
  generations_->Add({{"compressor", c}, {"guarded", g}}).Increment();
  // CFR: one count per catastrophic generation, whatever flags it carries. A loop usually runs
  // to the token limit too, so its primary cause is the loop.
  if (loop || non_terminated)
    catastrophic_
        ->Add({{"cause", loop ? "loop" : "non_termination"}, {"compressor", c}, {"guarded", g}})
        .Increment();
  if (loop) catastrophes_->Add({{"kind", "loop"}, {"compressor", c}, {"guarded", g}}).Increment();
  if (non_terminated)
    catastrophes_->Add({{"kind", "non_termination"}, {"compressor", c}, {"guarded", g}})
        .Increment();
  if (wrong_answer)
    catastrophes_->Add({{"kind", "wrong_answer"}, {"compressor", c}, {"guarded", g}}).Increment();
}

void ServerMetrics::KvPool(int64_t pool_bytes, int64_t used_bytes, int64_t free_blocks,
                           int64_t preempted) {
  pool_bytes_->Set(static_cast<double>(pool_bytes));
  pool_used_bytes_->Set(static_cast<double>(used_bytes));
  pool_free_blocks_->Set(static_cast<double>(free_blocks));
  preempted_->Set(static_cast<double>(preempted));
}

}  // namespace kvguard::server
