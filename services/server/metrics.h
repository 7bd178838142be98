// File: services/server/metrics.h
//
// Every Prometheus metric family of kvguard-server, defined in one place
// (prometheus-cpp 1.0.1). The scheduler and the service update them; the
// Exposer serves them on --metrics_listen at /metrics.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace kvguard::server {

class ServerMetrics {
 public:
  ServerMetrics();

  // Starts serving /metrics; throws nothing, returns false on a bad address.
  bool Serve(const std::string& address);
  [[nodiscard]] std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void RequestFinished(const std::string& status);
  void RequestRejected(const std::string& reason);
  void Tokens(int64_t prompt, int64_t completion);
  void TimeToFirstToken(double seconds) { ttft_->Observe(seconds); }
  void InterTokenLatency(double seconds) { itl_->Observe(seconds); }
  void RequestDuration(double seconds) { duration_->Observe(seconds); }
  void DecodeStep(double seconds, int64_t batch_size);
  void Queue(int64_t queued, int64_t active);
  void KvBytes(int64_t bytes) { kv_bytes_->Set(static_cast<double>(bytes)); }
  void RetainedFraction(double fraction) { retained_->Observe(fraction); }
  void Mode(const std::string& mode) { mode_steps_->Add({{"mode", mode}}).Increment(); }
  void ModeTransition(const std::string& from, const std::string& to);
  void Hazard(double hazard) { hazard_->Observe(hazard); }
  void GuardRoundTrip(double seconds) { guard_rtt_->Observe(seconds); }
  void FailSafe(const std::string& reason) { fail_safe_->Add({{"reason", reason}}).Increment(); }
  void GuardConnected(bool connected) { guard_connected_->Set(connected ? 1 : 0); }
  void Generation(const std::string& compressor, bool guarded, bool loop, bool non_terminated,
                  bool wrong_answer);
  void KvBytesSaved(int64_t bytes) { kv_saved_->Increment(static_cast<double>(bytes)); }
  void Recovered(int64_t positions) { recovered_->Increment(static_cast<double>(positions)); }
  void Restarted() { restarts_->Increment(); }

  // --- the KV pool and admission by bytes ---
  void KvPool(int64_t pool_bytes, int64_t used_bytes, int64_t free_blocks, int64_t preempted);
  // Requests waiting at the head of the queue for `reason`
  // (max_concurrent, kv_blocks, preempted_first).
  void Waiting(const std::string& reason, int64_t n) {
    waiting_->Add({{"reason", reason}}).Set(static_cast<double>(n));
  }
  void Admitted(const std::string& kind) { admitted_->Add({{"kind", kind}}).Increment(); }
  void Preempted() { preemptions_->Increment(); }
  void QueueTime(double seconds) { queue_time_->Observe(seconds); }
  void QueueCapacity(int64_t n) { queue_capacity_->Set(static_cast<double>(n)); }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* rejected_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generated_tokens_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* duration_;
  prometheus::Histogram* step_;
  prometheus::Histogram* batch_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* active_;
  prometheus::Gauge* kv_bytes_;
  prometheus::Histogram* retained_;
  prometheus::Family<prometheus::Counter>* mode_steps_;
  prometheus::Family<prometheus::Counter>* transitions_;
  prometheus::Histogram* hazard_;
  prometheus::Histogram* guard_rtt_;
  prometheus::Family<prometheus::Counter>* fail_safe_;
  prometheus::Gauge* guard_connected_;
  prometheus::Family<prometheus::Counter>* generations_;
  // Per-flag breakdown (a generation can carry several kinds) and one count per catastrophic
  // generation (loop or non-termination; what CFR divides by kvguard_generations_total).
  prometheus::Family<prometheus::Counter>* catastrophes_;
  prometheus::Family<prometheus::Counter>* catastrophic_;
  prometheus::Counter* kv_saved_;
  prometheus::Counter* recovered_;
  prometheus::Counter* restarts_;
  prometheus::Gauge* pool_bytes_;
  prometheus::Gauge* pool_used_bytes_;
  prometheus::Gauge* pool_free_blocks_;
  prometheus::Gauge* preempted_;
  prometheus::Family<prometheus::Gauge>* waiting_;
  prometheus::Family<prometheus::Counter>* admitted_;
  prometheus::Counter* preemptions_;
  prometheus::Histogram* queue_time_;
  prometheus::Gauge* queue_capacity_;
};

}  // namespace kvguard::server
