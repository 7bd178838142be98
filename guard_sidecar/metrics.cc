#include "guard_sidecar/metrics.h"

#include "absl/strings/str_cat.h"
#include "guard_sidecar/controller.h"

namespace kvguard::guard {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// The guard's work per batch is tens of microseconds; the buckets start there.
Histogram::BucketBoundaries Latency() {
  return {1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1};
}
Histogram::BucketBoundaries Unit() {
  return {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
}
constexpr v1::Mode kModes[] = {v1::MODE_NORMAL, v1::MODE_ALERT, v1::MODE_SAFE, v1::MODE_RECOVERY};

}  // namespace

GuardMetrics::GuardMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  auto counter = [&r](const char* name, const char* help) {
    return &BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  auto gauge = [&r](const char* name, const char* help) {
    return &BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  auto histogram = [&r](const char* name, const char* help, Histogram::BucketBoundaries b) {
    return &BuildHistogram().Name(name).Help(help).Register(r).Add({}, std::move(b));
  };
  steps_ = counter("kvguard_guard_steps_total", "Step reports scored");
  batches_ = counter("kvguard_guard_batches_total", "Step batches answered");
  sessions_ = gauge("kvguard_guard_sessions_active", "Sessions held by the guard");
  streams_ = gauge("kvguard_guard_streams_active", "Open Guard streams");
  hazard_ = histogram("kvguard_guard_hazard", "Hazard per step", Unit());
  predict_ = histogram("kvguard_guard_predict_seconds", "One batched hazard prediction", Latency());
  batch_ = histogram("kvguard_guard_batch_seconds", "One step batch from receipt to directives",
                     Latency());
  predict_errors_ = counter("kvguard_guard_predict_errors_total",
                            "Failed predictions (the fallback rule answered)");
  transitions_ = &BuildCounter()
                      .Name("kvguard_guard_mode_transitions_total")
                      .Help("Mode changes decided, by from and to mode")
                      .Register(r);
  mode_steps_ = &BuildCounter()
                     .Name("kvguard_guard_mode_steps_total")
                     .Help("Steps decided in each mode")
                     .Register(r);
  // Create the labelled series dashboards query, so they exist from the start;
  // and keep the per-mode counters, which are updated on every step.
  for (v1::Mode m : kModes) {
    mode_step_[m] = &mode_steps_->Add({{"mode", std::string(ModeName(m))}});
  }
  mode_step_[v1::MODE_UNSPECIFIED] = mode_step_[v1::MODE_NORMAL];
}

absl::StatusOr<int> GuardMetrics::Serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  const auto ports = exposer_->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError(absl::StrCat("no metrics port for ", address));
  return ports.front();
}

void GuardMetrics::Batch(double seconds, int64_t steps) {
  batch_->Observe(seconds);
  batches_->Increment();
  steps_->Increment(static_cast<double>(steps));
}

void GuardMetrics::ModeStep(v1::Mode mode) {
  const int m = static_cast<int>(mode);
  mode_step_[m >= 0 && m < 5 ? m : v1::MODE_NORMAL]->Increment();
}

void GuardMetrics::ModeTransition(v1::Mode from, v1::Mode to) {
  transitions_->Add({{"from", std::string(ModeName(from))}, {"to", std::string(ModeName(to))}})
      .Increment();
}

void GuardMetrics::ModelInfo(const std::string& hazard, const std::string& controller) {
  prometheus::BuildGauge()
      .Name("kvguard_guard_model_info")
      .Help("The hazard model and controller config this guard runs (always 1)")
      .Register(*registry_)
      .Add({{"hazard", hazard}, {"controller", controller}})
      .Set(1);
}

}  // namespace kvguard::guard
