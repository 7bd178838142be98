// File: guard_sidecar/metrics.h
//
// Every Prometheus metric family of kvguard-guard, defined in one place
// (prometheus-cpp 1.0.1), served on --metrics_listen at /metrics:
//
//   kvguard_guard_steps_total                  step reports scored
//   kvguard_guard_batches_total                step batches answered
//   kvguard_guard_sessions_active              sessions held (gauge)
//   kvguard_guard_streams_active               open Guard streams (gauge)
//   kvguard_guard_hazard                       hazard per step (histogram, 0..1)
//   kvguard_guard_mode_transitions_total{from,to}
//   kvguard_guard_mode_steps_total{mode}       steps decided in each mode
//   kvguard_guard_predict_seconds              one batched hazard prediction
//   kvguard_guard_batch_seconds                one whole batch (features..directives)
//   kvguard_guard_predict_errors_total         predictions that failed (fallback used)
//
// Thread-safe (prometheus-cpp metrics are).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvguard/v1/common.pb.h"

namespace kvguard::guard {

class GuardMetrics {
 public:
  GuardMetrics();

  // Starts serving /metrics on `address` ("host:port", port 0 = any free
  // one); returns the bound port.
  absl::StatusOr<int> Serve(const std::string& address);
  [[nodiscard]] std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void Batch(double seconds, int64_t steps);
  void Predict(double seconds) { predict_->Observe(seconds); }
  void PredictError() { predict_errors_->Increment(); }
  void Hazard(double hazard) { hazard_->Observe(hazard); }
  void ModeStep(v1::Mode mode);
  void ModeTransition(v1::Mode from, v1::Mode to);
  void SessionsChanged(int64_t delta) { sessions_->Increment(static_cast<double>(delta)); }
  void StreamOpened() { streams_->Increment(); }
  void StreamClosed() { streams_->Decrement(); }
  // kvguard_guard_model_info{hazard, controller} = 1: which model and
  // controller config this guard runs (a path, "fallback-rule", "built-in").
  void ModelInfo(const std::string& hazard, const std::string& controller);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Counter* steps_;
  prometheus::Counter* batches_;
  prometheus::Gauge* sessions_;
  prometheus::Gauge* streams_;
  prometheus::Histogram* hazard_;
  prometheus::Family<prometheus::Counter>* transitions_;
  prometheus::Family<prometheus::Counter>* mode_steps_;
  prometheus::Counter* mode_step_[5] = {};  // by v1::Mode value, cached: hot path
  prometheus::Histogram* predict_;
  prometheus::Histogram* batch_;
  prometheus::Counter* predict_errors_;
};

}  // namespace kvguard::guard
