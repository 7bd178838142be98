#include "guard_sidecar/guard_service.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>

namespace kvguard::guard {
namespace {

using Clock = std::chrono::steady_clock;
double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

float Clamp01(float h) { return std::isnan(h) ? 0.0f : std::clamp(h, 0.0f, 1.0f); }

}  // namespace

// ---- GuardEngine ----------------------------------------------------------------------

GuardEngine::GuardEngine(const HazardPredictor& hazard, ControllerConfig config,
                         GuardMetrics* metrics)
    : hazard_(hazard), config_(std::move(config)), metrics_(metrics) {}

GuardStats GuardEngine::stats() const {
  return {.streams_active = streams_active_.load(),
          .streams_total = streams_total_.load(),
          .batches = batches_.load(),
          .steps = steps_.load(),
          .sessions_active = sessions_active_.load(),
          .predict_errors = predict_errors_.load()};
}

std::vector<float> GuardEngine::Score(std::span<const float> full_rows) {
  const auto t0 = Clock::now();
  auto hazards = hazard_.Predict(full_rows);
  if (metrics_) metrics_->Predict(SecondsSince(t0));
  if (hazards.ok() && hazards->size() == full_rows.size() / kNumFeatures)
    return *std::move(hazards);
  // Log the first failure only: a broken model would otherwise flood the log.
  if (predict_errors_.fetch_add(1) == 0) {
    std::cerr << "kvguard-guard: hazard prediction failed, using the fallback rule: "
              << hazards.status() << std::endl;
  }
  if (metrics_) metrics_->PredictError();
  return *fallback_.Predict(full_rows);
}

void GuardEngine::StreamOpened() {
  ++streams_active_;
  ++streams_total_;
  if (metrics_) metrics_->StreamOpened();
}

void GuardEngine::StreamClosed() {
  --streams_active_;
  if (metrics_) metrics_->StreamClosed();
}

void GuardEngine::SessionsChanged(int64_t delta) {
  sessions_active_ += delta;
  if (metrics_) metrics_->SessionsChanged(delta);
}

void GuardEngine::BatchDone(double seconds, int64_t steps) {
  ++batches_;
  steps_ += steps;
  if (metrics_) metrics_->Batch(seconds, steps);
}

// ---- StreamSessions ---------------------------------------------------------------------

StreamSessions::~StreamSessions() {
  engine_.SessionsChanged(-static_cast<int64_t>(sessions_.size()));
}

const ModeController* StreamSessions::controller(const std::string& session_id) const {
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? nullptr : &it->second->controller;
}

void StreamSessions::Start(const v1::SessionStart& start) {
  SessionInfo info{.requested_ratio = start.requested_ratio(),
                   .compressor = start.compressor(),
                   .holdback_tokens = start.holdback_tokens(),
                   .prompt_tokens = start.prompt_tokens(),
                   .max_new_tokens = start.max_new_tokens()};
  auto session = std::make_unique<Session>(info, engine_.config());
  session->started = true;
  auto [it, inserted] = sessions_.insert_or_assign(start.session_id(), std::move(session));
  if (inserted) engine_.SessionsChanged(1);
}

StreamSessions::Session& StreamSessions::FindOrCreate(const v1::StepReport& report) {
  auto it = sessions_.find(report.session_id());
  if (it != sessions_.end()) return *it->second;
  // A report without a start (e.g. the server reconnected mid-generation):
  // the ratio in force is the best guess of what was requested.
  SessionInfo info{.requested_ratio = report.kv().ratio()};
  engine_.SessionsChanged(1);
  return *sessions_.emplace(report.session_id(), std::make_unique<Session>(info, engine_.config()))
              .first->second;
}

v1::DirectiveBatch StreamSessions::Process(const v1::StepBatch& batch) {
  const auto t0 = Clock::now();
  for (const v1::SessionStart& start : batch.starts()) Start(start);
  const int n = batch.reports_size();
  std::vector<Session*> owners(n);
  std::vector<float> rows(static_cast<size_t>(n) * kNumFeatures);
  FeatureRow row;
  for (int i = 0; i < n; ++i) {
    owners[i] = &FindOrCreate(batch.reports(i));
    owners[i]->features.Update(batch.reports(i), row);
    std::copy(row.begin(), row.end(), rows.begin() + static_cast<ptrdiff_t>(i) * kNumFeatures);
  }
  const std::vector<float> hazards = n > 0 ? engine_.Score(rows) : std::vector<float>{};
  v1::DirectiveBatch out;
  out.set_batch_id(batch.batch_id());
  std::map<const Session*, int> quiet;  // by each session's latest report
  for (int i = 0; i < n; ++i) {
    Decide(*owners[i], batch.reports(i), hazards[i], *out.add_directives());
    quiet[owners[i]] = owners[i]->controller.QuietSteps(Clamp01(hazards[i]));
  }
  int leave = quiet.empty() ? 1 : std::numeric_limits<int>::max();
  for (const auto& [session, steps] : quiet) leave = std::min(leave, steps);
  out.set_quiet_steps(static_cast<uint32_t>(leave));
  for (const v1::SessionEnd& end : batch.ends()) {
    if (sessions_.erase(end.session_id()) > 0) engine_.SessionsChanged(-1);
  }
  engine_.BatchDone(SecondsSince(t0), n);
  return out;
}

void StreamSessions::Decide(Session& s, const v1::StepReport& report, float hazard,
                            v1::Directive& out) {
  hazard = Clamp01(hazard);
  const std::vector<int32_t> evicted(report.evicted_positions().begin(),
                                     report.evicted_positions().end());
  const std::vector<float> attention(report.evicted_attention().begin(),
                                     report.evicted_attention().end());
  const Decision d =
      s.controller.Step({.hazard = hazard,
                         .position = s.features.last_position(),
                         .thinking = s.features.last_is_thinking(),
                         .requested_ratio = s.features.info().requested_ratio,
                         .holdback_tokens = s.features.info().holdback_tokens,
                         .admission = engine_.config().AdmissionFor(s.features.info().compressor),
                         .evicted_positions = evicted,
                         .evicted_attention = attention});
  out.set_session_id(report.session_id());
  out.set_step(report.step());
  out.set_mode(d.mode);
  out.mutable_target_ratio()->set_value(d.target_ratio);
  out.mutable_protect_positions()->Add(d.protect_positions.begin(), d.protect_positions.end());
  out.mutable_recompute_positions()->Add(d.recompute_positions.begin(),
                                         d.recompute_positions.end());
  out.set_hazard(hazard);
  if (d.restart_ratio) out.mutable_restart_ratio()->set_value(*d.restart_ratio);
  out.set_release_held(d.release_held);
  if (GuardMetrics* m = engine_.metrics()) {
    m->Hazard(hazard);
    m->ModeStep(d.mode);
    if (d.mode != d.previous_mode) m->ModeTransition(d.previous_mode, d.mode);
  }
}

// ---- the stream reactor -------------------------------------------------------------------

namespace {

// Reads batch after batch; each is processed on arrival (tens of microseconds,
// so inline on the callback thread) and its answer queued for writing. One
// read and one write are in flight at most; writes go out in batch order.
class GuardReactor final : public grpc::ServerBidiReactor<v1::StepBatch, v1::DirectiveBatch> {
 public:
  explicit GuardReactor(GuardEngine& engine) : engine_(engine), sessions_(engine) {
    engine_.StreamOpened();
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side, or the stream broke
      std::lock_guard<std::mutex> lock(mu_);
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    v1::DirectiveBatch answer = sessions_.Process(request_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!write_failed_) {
        pending_.push_back(std::move(answer));
        if (!writing_) StartNextWriteLocked();
      }
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.pop_front();
    writing_ = false;
    if (!ok) {  // broken stream: nothing more can be delivered
      write_failed_ = true;
      pending_.clear();
    } else if (!pending_.empty()) {
      StartNextWriteLocked();
    }
    MaybeFinishLocked();
  }

  void OnDone() override {
    engine_.StreamClosed();
    delete this;  // ~StreamSessions drops the stream's sessions
  }

 private:
  void StartNextWriteLocked() {
    writing_ = true;
    StartWrite(&pending_.front());  // deque: the element stays put while others are queued
  }

  void MaybeFinishLocked() {
    if (reads_done_ && !writing_ && !finished_) {
      finished_ = true;
      Finish(grpc::Status::OK);
    }
  }

  GuardEngine& engine_;
  StreamSessions sessions_;  // touched only by OnReadDone (one read at a time)
  v1::StepBatch request_;
  std::mutex mu_;
  std::deque<v1::DirectiveBatch> pending_;
  bool writing_ = false;
  bool reads_done_ = false;
  bool write_failed_ = false;
  bool finished_ = false;
};

}  // namespace

grpc::ServerBidiReactor<v1::StepBatch, v1::DirectiveBatch>* GuardServiceImpl::Guard(
    grpc::CallbackServerContext* /*context*/) {
  return new GuardReactor(engine_);
}

}  // namespace kvguard::guard
