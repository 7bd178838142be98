// File: guard_sidecar/guard_service.h
//
// The guard's side of kvguard.v1.GuardService (guard.proto): one long-lived
// bidirectional stream per server process; the server sends one StepBatch per
// decode step, the guard answers one DirectiveBatch with the same batch_id.
//
//   GuardEngine engine(hazard, controller_config, &metrics);  // shared, thread-safe
//   GuardServiceImpl service(engine);                          // register with a ServerBuilder
//
// Per batch (StreamSessions::Process): SessionStarts create sessions (a second
// start for an id resets it); every report updates its session's features (a
// report for an unknown session creates one with defaults, its requested
// ratio taken from the report's kv.ratio); ONE hazard prediction scores all
// the batch's reports; each session's controller steps once per report; then
// SessionEnds drop sessions (after their last reports were answered). Sessions
// belong to the stream that created them: a broken or finished stream drops
// them all, and a reconnecting server's sessions start afresh.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <unordered_map>

#include "guard_sidecar/controller.h"
#include "guard_sidecar/features.h"
#include "guard_sidecar/hazard_model.h"
#include "guard_sidecar/metrics.h"
#include "kvguard/v1/guard.grpc.pb.h"

namespace kvguard::guard {

struct GuardStats {
  int64_t streams_active = 0;
  int64_t streams_total = 0;
  int64_t batches = 0;
  int64_t steps = 0;
  int64_t sessions_active = 0;
  int64_t predict_errors = 0;
};

// What all streams share: the predictor, the controller config, metrics and
// counters. Thread-safe (the predictor's Predict is).
class GuardEngine {
 public:
  // `hazard` and `metrics` (nullable) must outlive the engine.
  GuardEngine(const HazardPredictor& hazard, ControllerConfig config,
              GuardMetrics* metrics = nullptr);

  [[nodiscard]] GuardStats stats() const;
  [[nodiscard]] const ControllerConfig& config() const { return config_; }
  [[nodiscard]] GuardMetrics* metrics() const { return metrics_; }

  // One batched prediction over n full feature rows; on a predictor error the
  // fallback rule answers (the guard never fails a batch) and it is counted.
  std::vector<float> Score(std::span<const float> full_rows);

  // Bookkeeping hooks for StreamSessions and the reactor.
  void StreamOpened();
  void StreamClosed();
  void SessionsChanged(int64_t delta);
  void BatchDone(double seconds, int64_t steps);

 private:
  const HazardPredictor& hazard_;
  FallbackHazard fallback_;
  ControllerConfig config_;
  GuardMetrics* metrics_;
  std::atomic<int64_t> streams_active_{0}, streams_total_{0}, batches_{0}, steps_{0},
      sessions_active_{0}, predict_errors_{0};
};

// The sessions of one stream. Not thread-safe: a stream's batches are
// processed one at a time, in order.
class StreamSessions {
 public:
  explicit StreamSessions(GuardEngine& engine) : engine_(engine) {}
  ~StreamSessions();  // drops every session of the stream
  StreamSessions(const StreamSessions&) = delete;
  StreamSessions& operator=(const StreamSessions&) = delete;

  v1::DirectiveBatch Process(const v1::StepBatch& batch);

  [[nodiscard]] size_t size() const { return sessions_.size(); }
  // nullptr if the session is unknown (for tests and introspection).
  [[nodiscard]] const ModeController* controller(const std::string& session_id) const;

 private:
  struct Session {
    Session(SessionInfo info, const ControllerConfig& config)
        : features(info), controller(config) {}
    SessionFeatures features;
    ModeController controller;
    bool started = false;  // a SessionStart was seen (else ratio from kv.ratio)
  };

  void Start(const v1::SessionStart& start);
  Session& FindOrCreate(const v1::StepReport& report);
  void Decide(Session& s, const v1::StepReport& report, float hazard, v1::Directive& out);

  GuardEngine& engine_;
  // unordered_map: node-based, so Session references survive rehashing.
  std::unordered_map<std::string, std::unique_ptr<Session>> sessions_;
};

class GuardServiceImpl final : public v1::GuardService::CallbackService {
 public:
  explicit GuardServiceImpl(GuardEngine& engine) : engine_(engine) {}
  grpc::ServerBidiReactor<v1::StepBatch, v1::DirectiveBatch>* Guard(
      grpc::CallbackServerContext* context) override;

 private:
  GuardEngine& engine_;
};

}  // namespace kvguard::guard
