// The scheduler in-process on a real checkpoint, with a scripted guard link
// and recording sinks: admission by KV bytes, preemption that changes no
// greedy output, refusal of what cannot fit, directives at lag 0 and 1, and
// cancellation that frees the pool.
#include "services/server/scheduler.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>

#include "services/engine/checkpoint.h"
#include "services/engine/kv_layer_store.h"
#include "services/engine/llama_model.h"

namespace kvguard::server {
namespace {

using namespace std::chrono_literals;

class RecordingSink final : public ResponseSink {
 public:
  explicit RecordingSink(int cancel_after = -1) : cancel_after_(cancel_after) {}
  void Token(TokenEvent e) override {
    std::lock_guard<std::mutex> lock(mu_);
    ids_.push_back(e.token_id);
    ratios_.push_back(e.ratio);
    modes_.push_back(e.mode);
    retained_.push_back(e.retained_tokens);
  }
  void Complete(CompletionEvent e) override {
    std::lock_guard<std::mutex> lock(mu_);
    complete_ = std::move(e);
  }
  void Finish(const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    finished_ = true;
    cv_.notify_all();
  }
  bool Cancelled() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return cancel_after_ >= 0 && static_cast<int>(ids_.size()) >= cancel_after_;
  }
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, 60s, [&] { return finished_; })) << "stream never finished";
    return status_;
  }
  std::vector<int32_t> ids() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_;
  }
  std::vector<double> ratios() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ratios_;
  }
  std::vector<v1::Mode> modes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return modes_;
  }
  std::vector<int64_t> retained() const {
    std::lock_guard<std::mutex> lock(mu_);
    return retained_;
  }

 private:
  int cancel_after_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> ids_;
  std::vector<double> ratios_;
  std::vector<v1::Mode> modes_;
  std::vector<int64_t> retained_;
  CompletionEvent complete_;
  absl::Status status_;
  bool finished_ = false;
};

// A guard answering every batch at once with what `policy` says per report.
class ScriptedGuard final : public GuardLink {
 public:
  using Policy = std::function<std::optional<v1::Directive>(const v1::StepReport&)>;
  explicit ScriptedGuard(Policy policy, uint32_t quiet_steps = 0)
      : policy_(std::move(policy)), quiet_steps_(quiet_steps) {}
  void Send(v1::StepBatch batch) override {
    v1::DirectiveBatch answer;
    answer.set_batch_id(batch.batch_id());
    answer.set_quiet_steps(quiet_steps_);
    for (const v1::StepReport& r : batch.reports()) {
      if (auto d = policy_(r)) {
        d->set_session_id(r.session_id());
        d->set_step(r.step());
        *answer.add_directives() = *d;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    answers_[batch.batch_id()] = std::move(answer);
    reports_per_batch_.push_back(batch.reports_size());
  }
  std::vector<int> reports_per_batch() {
    std::lock_guard<std::mutex> lock(mu_);
    return reports_per_batch_;
  }
  std::optional<v1::DirectiveBatch> Await(uint64_t batch_id,
                                          std::chrono::steady_clock::time_point) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = answers_.find(batch_id);
    if (it == answers_.end()) return std::nullopt;
    return it->second;
  }
  bool connected() const override { return true; }

 private:
  Policy policy_;
  uint32_t quiet_steps_;
  std::mutex mu_;
  std::map<uint64_t, v1::DirectiveBatch> answers_;
  std::vector<int> reports_per_batch_;
};

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto ckpt = engine::OpenCheckpoint(std::string(KVG_TEST_DATA_DIR) + "/models/tiny-qwen2");
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto model = engine::LlamaModel::Load(std::move(*ckpt), {});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model).release();
  }
  static void TearDownTestSuite() { delete model_; }

  // A KV pool of `blocks` blocks of 16 tokens per layer.
  static std::shared_ptr<engine::KvArena> Pool(int64_t blocks) {
    const engine::KvCacheOptions c = model_->CacheOptions();
    const engine::LayerShape shape{
        .kv_heads = c.num_kv_heads, .head_dim = c.head_dim, .dtype = c.dtype};
    auto arena = engine::NewKvArena(shape, blocks * 16 * engine::TokenBytes(shape), 16);
    EXPECT_TRUE(arena.ok());
    return *arena;
  }
  static int64_t Layers() { return model_->config().num_layers; }

  static engine::GenerateRequest Request(int seed, double ratio = 0, int new_tokens = 24) {
    engine::GenerateRequest r;
    for (int i = 0; i < 48; ++i) r.prompt_ids.push_back(3 + (i * 37 + seed * 101) % 500);
    r.max_new_tokens = new_tokens;
    r.ignore_eos = true;
    // A small observation window: SnapKV keeps its window whatever the ratio.
    if (ratio > 0)
      r.compression = {.compressor = "snapkv", .options = {"window_size=8"}, .ratio = ratio};
    return r;
  }

  // A guarded request under `id`, streaming into `sink`.
  static absl::Status SubmitGuarded(Scheduler& scheduler, std::string id,
                                    engine::GenerateRequest request,
                                    std::shared_ptr<RecordingSink> sink) {
    return scheduler.Submit({.request_id = std::move(id),
                             .request = std::move(request),
                             .guarded = true,
                             .sink = std::move(sink)});
  }

  struct Run {
    std::vector<std::vector<int32_t>> ids;
    std::vector<absl::Status> status;
    int64_t max_batch = 0;
    Scheduler::Stats stats;
  };
  // Submits every request at once and waits for all of them.
  static Run RunAll(const std::vector<engine::GenerateRequest>& requests, SchedulerOptions options,
                    GuardLink* guard = nullptr, bool guarded = false) {
    Run run;
    std::mutex mu;
    options.on_step = [&](const StepTiming& t) {
      std::lock_guard<std::mutex> lock(mu);
      run.max_batch = std::max(run.max_batch, t.batch);
    };
    Scheduler scheduler(*model_, nullptr, options, guard, nullptr);
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (size_t i = 0; i < requests.size(); ++i) {
      sinks.push_back(std::make_shared<RecordingSink>());
      absl::Status s = scheduler.Submit({.request_id = "r" + std::to_string(i),
                                         .request = requests[i],
                                         .guarded = guarded,
                                         .sink = sinks.back()});
      EXPECT_TRUE(s.ok()) << s;
    }
    for (auto& sink : sinks) {
      run.status.push_back(sink->Wait());
      run.ids.push_back(sink->ids());
    }
    run.stats = scheduler.stats();
    return run;
  }

  static engine::LlamaModel* model_;
};
engine::LlamaModel* SchedulerTest::model_ = nullptr;

TEST_F(SchedulerTest, ThePoolBoundsConcurrencyAndCompressionBuysMore) {
  // 48 + 24 tokens = 5 blocks per layer uncompressed; the pool holds 2 such.
  const int64_t blocks = 2 * 5 * Layers();
  std::vector<engine::GenerateRequest> plain, compressed;
  for (int i = 0; i < 6; ++i) {
    plain.push_back(Request(i));
    compressed.push_back(Request(i, 0.75));
  }
  SchedulerOptions unpooled{.max_concurrent = 16};
  SchedulerOptions pooled{.max_concurrent = 16, .kv_arena = Pool(blocks)};
  const Run free_run = RunAll(plain, unpooled);
  const Run tight = RunAll(plain, pooled);
  EXPECT_EQ(free_run.max_batch, 6);
  EXPECT_EQ(tight.max_batch, 2);
  EXPECT_EQ(tight.ids, free_run.ids);  // batching never changes a greedy output here
  for (const auto& s : tight.status) EXPECT_TRUE(s.ok()) << s;
  // Ratio 0.75 keeps 19 of 72 tokens (2 blocks per layer): 5 fit in the same pool.
  const Run more = RunAll(compressed, {.max_concurrent = 16, .kv_arena = Pool(blocks)});
  EXPECT_GE(more.max_batch, 4);
  EXPECT_EQ(more.ids, RunAll(compressed, unpooled).ids);
}

TEST_F(SchedulerTest, RefusesAtSubmitWhatCannotFitEvenAlone) {
  SchedulerOptions options{.kv_arena = Pool(4 * Layers())};
  Scheduler scheduler(*model_, nullptr, options, nullptr, nullptr);
  auto sink = std::make_shared<RecordingSink>();
  absl::Status s = scheduler.Submit({.request_id = "big", .request = Request(0), .sink = sink});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("KV cache"), std::string::npos) << s;
  // Compressed, the same request fits.
  EXPECT_TRUE(
      scheduler.Submit({.request_id = "small", .request = Request(0, 0.875), .sink = sink}).ok());
  const absl::Status done = sink->Wait();
  EXPECT_TRUE(done.ok()) << done;
}

TEST_F(SchedulerTest, GrowthPastTheReservationPreemptsAndChangesNoOutput) {
  // The guard sends every sequence SAFE (eviction stops, ratio 0) at step 4:
  // each grows past its ratio-0.75 reservation and the pool runs short.
  ScriptedGuard safe_at_4([](const v1::StepReport& r) -> std::optional<v1::Directive> {
    v1::Directive d;
    d.set_mode(r.step() >= 4 ? v1::MODE_SAFE : v1::MODE_NORMAL);
    d.mutable_target_ratio()->set_value(r.step() >= 4 ? 0.0 : 0.75);
    return d;
  });
  std::vector<engine::GenerateRequest> requests;
  for (int i = 0; i < 5; ++i) requests.push_back(Request(i, 0.75, 40));
  const Run reference = RunAll(requests, {.max_concurrent = 16}, &safe_at_4, true);
  const Run pressured =
      RunAll(requests, {.max_concurrent = 16, .kv_arena = Pool(12 * Layers())}, &safe_at_4, true);
  for (const auto& s : pressured.status) EXPECT_TRUE(s.ok()) << s;
  EXPECT_GT(pressured.stats.preemptions, 0);
  EXPECT_EQ(pressured.stats.resumed, pressured.stats.preemptions);
  EXPECT_EQ(pressured.ids, reference.ids);
}

TEST_F(SchedulerTest, DirectivesApplyAtLagZeroAndOne) {
  // Report of step 2 answers ratio 0.5; at lag 0 step 3 runs under it, at lag 1 step 4.
  // Overlapped, the answer is awaited after step 3's forward, before its
  // compression: the stream is the strict one.
  ScriptedGuard at_2([](const v1::StepReport& r) -> std::optional<v1::Directive> {
    if (r.step() != 2) return std::nullopt;
    v1::Directive d;
    d.set_mode(v1::MODE_ALERT);
    d.mutable_target_ratio()->set_value(0.5);
    return d;
  });
  std::vector<std::vector<int32_t>> ids;
  for (const auto& [lag, overlap] :
       {std::pair(0, false), std::pair(0, true), std::pair(1, false)}) {
    Scheduler scheduler(*model_, nullptr, {.guard_lag = lag, .guard_overlap = overlap}, &at_2,
                        nullptr);
    auto sink = std::make_shared<RecordingSink>();
    ASSERT_TRUE(SubmitGuarded(scheduler, "d", Request(1, 0.25, 8), sink).ok());
    ASSERT_TRUE(sink->Wait().ok());
    const std::vector<double> ratios = sink->ratios();
    const std::vector<v1::Mode> modes = sink->modes();
    ASSERT_EQ(ratios.size(), 8u);
    const size_t first = 3 + lag;
    for (size_t s = 0; s < ratios.size(); ++s) {
      EXPECT_DOUBLE_EQ(ratios[s], s < first ? 0.25 : 0.5)
          << "lag " << lag << " overlap " << overlap << " step " << s;
      EXPECT_EQ(modes[s], s < first ? v1::MODE_NORMAL : v1::MODE_ALERT)
          << "lag " << lag << " overlap " << overlap << " step " << s;
    }
    ids.push_back(sink->ids());
  }
  EXPECT_EQ(ids[1], ids[0]);
}

TEST_F(SchedulerTest, AnOverlappedRestartDropsTheForwardAndStreamsWhatStrictStreams) {
  // The guard restarts every held request at ratio 0 on its step-3 report. The
  // strict scheduler restarts before the next forward; the overlapped one after
  // it, dropping that row. Two requests, so the batch keeps a row that is not
  // dropped; a third, unguarded, never hears the guard.
  ScriptedGuard restart_at_3([](const v1::StepReport& r) -> std::optional<v1::Directive> {
    if (r.step() != 3 || r.session_id().find("#restart") != std::string::npos) return std::nullopt;
    v1::Directive d;
    d.mutable_restart_ratio()->set_value(0.0);
    return d;
  });
  std::vector<std::vector<int32_t>> outputs[2];
  for (bool overlap : {false, true}) {
    Scheduler scheduler(*model_, nullptr, {.guard_overlap = overlap, .guard_probe_tokens = 6},
                        &restart_at_3, nullptr);
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (int i = 0; i < 3; ++i) {
      sinks.push_back(std::make_shared<RecordingSink>());
      ASSERT_TRUE(scheduler
                      .Submit({.request_id = "r" + std::to_string(i),
                               .request = Request(6 + i, 0.75, 10),
                               .guarded = i < 2,
                               .sink = sinks.back()})
                      .ok());
    }
    for (auto& sink : sinks) {
      ASSERT_TRUE(sink->Wait().ok());
      outputs[overlap].push_back(sink->ids());
      EXPECT_EQ(sink->ids().size(), 10u) << "overlap " << overlap;
    }
    // The restarted requests stream at ratio 0 from their first token.
    for (int i = 0; i < 2; ++i)
      EXPECT_DOUBLE_EQ(sinks[i]->ratios().front(), 0.0) << "overlap " << overlap;
    EXPECT_DOUBLE_EQ(sinks[2]->ratios().back(), 0.75);
  }
  EXPECT_EQ(outputs[1], outputs[0]);
  const Run uncompressed = RunAll({Request(6, 0, 10), Request(7, 0, 10)}, {});
  EXPECT_EQ(outputs[1][0], uncompressed.ids[0]);
  EXPECT_EQ(outputs[1][1], uncompressed.ids[1]);
}

TEST_F(SchedulerTest, AGuardThatMissesItsDeadlineSendsOnlyGuardedRequestsSafe) {
  // A guard that never answers: after the deadline the guarded request runs
  // SAFE (ratio 0); the unguarded one in the same batch keeps its ratio.
  class SilentGuard final : public GuardLink {
   public:
    void Send(v1::StepBatch) override {}
    std::optional<v1::DirectiveBatch> Await(uint64_t,
                                            std::chrono::steady_clock::time_point) override {
      return std::nullopt;
    }
    bool connected() const override { return true; }
  } silent;
  for (bool overlap : {false, true}) {
    Scheduler scheduler(*model_, nullptr, {.guard_overlap = overlap}, &silent, nullptr);
    auto guarded = std::make_shared<RecordingSink>(), plain = std::make_shared<RecordingSink>();
    ASSERT_TRUE(SubmitGuarded(scheduler, "g", Request(1, 0.5, 6), guarded).ok());
    ASSERT_TRUE(
        scheduler.Submit({.request_id = "p", .request = Request(2, 0.5, 6), .sink = plain}).ok());
    ASSERT_TRUE(guarded->Wait().ok());
    ASSERT_TRUE(plain->Wait().ok());
    EXPECT_EQ(guarded->modes().back(), v1::MODE_SAFE) << "overlap " << overlap;
    EXPECT_DOUBLE_EQ(guarded->ratios().back(), 0.0) << "overlap " << overlap;
    EXPECT_EQ(plain->modes().back(), v1::MODE_NORMAL) << "overlap " << overlap;
    EXPECT_DOUBLE_EQ(plain->ratios().back(), 0.5) << "overlap " << overlap;
    EXPECT_GT(scheduler.stats().fail_safe_steps, 0);
  }
}

TEST_F(SchedulerTest, RecoveryRebuildsTheWholeCacheWithTheNextForward) {
  // RECOVERY on the step-4 report: eviction stops and the cache is rebuilt
  // from the token history, so from then on a step holds every position (the
  // 48 prompt tokens and one per earlier step), from step 5 on. Strict
  // rebuilds with step 5's forward; overlapped, the directive lands after it,
  // so that row is dropped and step 5 redone on the rebuilt cache: the same
  // stream either way.
  ScriptedGuard recover_at_4([](const v1::StepReport& r) -> std::optional<v1::Directive> {
    if (r.step() < 4) return std::nullopt;
    v1::Directive d;
    d.set_mode(v1::MODE_RECOVERY);
    if (r.step() == 4) d.add_recompute_positions(3);
    return d;
  });
  std::vector<int32_t> ids[2];
  for (bool overlap : {false, true}) {
    auto arena = Pool(12 * Layers());
    {
      Scheduler scheduler(*model_, nullptr, {.guard_overlap = overlap, .kv_arena = arena},
                          &recover_at_4, nullptr);
      auto sink = std::make_shared<RecordingSink>();
      ASSERT_TRUE(SubmitGuarded(scheduler, "rec", Request(3, 0.75, 10), sink).ok());
      ASSERT_TRUE(sink->Wait().ok());
      const std::vector<int64_t> retained = sink->retained();
      ASSERT_EQ(retained.size(), 10u);
      ids[overlap] = sink->ids();
      const size_t rebuilt = 5;
      for (size_t s = 0; s < retained.size(); ++s) {
        if (s < rebuilt)
          EXPECT_LT(retained[s], 48 + static_cast<int64_t>(s))
              << "overlap " << overlap << " step " << s;
        else
          EXPECT_EQ(retained[s], 48 + static_cast<int64_t>(s))
              << "overlap " << overlap << " step " << s;
      }
    }
    EXPECT_EQ(arena->pool->used_blocks(), 0);
  }
  EXPECT_EQ(ids[1], ids[0]);
}

TEST_F(SchedulerTest, AGuardIntervalBatchesReportsAndDelaysDirectivesButNotTheProbe) {
  // One guarded request of 12 tokens; the batches are read once the scheduler
  // has stopped (its last exchange follows the last token on the loop thread).
  struct Outcome {
    std::vector<int32_t> ids;
    std::vector<double> ratios;
    std::vector<int> batches;
  };
  auto run = [](ScriptedGuard::Policy policy, SchedulerOptions options) {
    ScriptedGuard guard(std::move(policy));
    auto sink = std::make_shared<RecordingSink>();
    {
      Scheduler scheduler(*model_, nullptr, options, &guard, nullptr);
      EXPECT_TRUE(SubmitGuarded(scheduler, "i", Request(2, 0.25, 12), sink).ok());
      EXPECT_TRUE(sink->Wait().ok());
    }
    return Outcome{sink->ids(), sink->ratios(), guard.reports_per_batch()};
  };
  // Every 4 steps: the reports of steps 0-3 go in one batch, and the answer to
  // step 2 (ratio 0.5) applies from step 4 at lag 0, from step 8 at lag 1.
  auto at_2 = [](const v1::StepReport& r) -> std::optional<v1::Directive> {
    if (r.step() != 2) return std::nullopt;
    v1::Directive d;
    d.mutable_target_ratio()->set_value(0.5);
    return d;
  };
  for (int lag : {0, 1}) {
    const Outcome o = run(at_2, {.guard_lag = lag, .guard_interval = 4});
    ASSERT_EQ(o.ratios.size(), 12u);
    const size_t first = lag == 0 ? 4 : 8;
    for (size_t s = 0; s < o.ratios.size(); ++s)
      EXPECT_DOUBLE_EQ(o.ratios[s], s < first ? 0.25 : 0.5) << "lag " << lag << " step " << s;
    // Steps 0-3, 4-7, 8-11 (the last batch also carries the session's end).
    EXPECT_EQ(o.batches, (std::vector<int>{4, 4, 4})) << "lag " << lag;
  }
  // While tokens are held back for the probe (6 steps), the guard hears every step.
  auto quiet = [](const v1::StepReport&) { return std::optional<v1::Directive>(); };
  const Outcome probed = run(quiet, {.guard_interval = 4, .guard_probe_tokens = 6});
  EXPECT_EQ(probed.batches, (std::vector<int>{1, 1, 1, 1, 1, 1, 4, 2}));
  // A guard that will not restart the request releases the hold at once: the
  // tokens stream, and the exchanges fall back to every 4 steps from step 1.
  auto release = [](const v1::StepReport&) {
    v1::Directive d;
    d.set_release_held(true);
    return std::optional<v1::Directive>(d);
  };
  const Outcome released = run(release, {.guard_interval = 4, .guard_probe_tokens = 6});
  EXPECT_EQ(released.batches, (std::vector<int>{1, 4, 4, 3}));
  EXPECT_EQ(released.ids, probed.ids);
}

TEST_F(SchedulerTest, TheGuardsQuietStepsStretchTheIntervalUpToABound) {
  auto batches = [](uint32_t quiet_steps, int tokens, SchedulerOptions options) {
    ScriptedGuard guard([](const v1::StepReport&) { return std::optional<v1::Directive>(); },
                        quiet_steps);
    auto sink = std::make_shared<RecordingSink>();
    {
      Scheduler scheduler(*model_, nullptr, options, &guard, nullptr);
      EXPECT_TRUE(SubmitGuarded(scheduler, "q", Request(3, 0.25, tokens), sink).ok());
      EXPECT_TRUE(sink->Wait().ok());
    }
    return guard.reports_per_batch();
  };
  // Step 0 goes alone (no answer yet); then one exchange per 4 steps.
  EXPECT_EQ(batches(4, 12, {}), (std::vector<int>{1, 4, 4, 3}));
  // The operator's interval is a floor, the guard's leave can only stretch it.
  EXPECT_EQ(batches(2, 12, {.guard_interval = 4}), (std::vector<int>{4, 4, 4}));
  // Leave past the bound is cut to kMaxGuardQuietSteps.
  EXPECT_EQ(batches(1000, 40, {}), (std::vector<int>{1, 16, 16, 7}));
  // 0 (a guard that predates the field) means every step.
  EXPECT_EQ(batches(0, 5, {}), (std::vector<int>{1, 1, 1, 1, 1}));
}

TEST_F(SchedulerTest, ADirectiveWithoutARatioLeavesTheRatioAlone) {
  // Step 1 sets 0.5; step 3 answers a mode only: the ratio stays 0.5 (an unset
  // ratio is not 0, which would stop eviction).
  ScriptedGuard guard([](const v1::StepReport& r) -> std::optional<v1::Directive> {
    v1::Directive d;
    if (r.step() == 1) d.mutable_target_ratio()->set_value(0.5);
    if (r.step() == 3) d.set_mode(v1::MODE_ALERT);
    if (r.step() != 1 && r.step() != 3) return std::nullopt;
    return d;
  });
  Scheduler scheduler(*model_, nullptr, {}, &guard, nullptr);
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE(SubmitGuarded(scheduler, "n", Request(4, 0.25, 6), sink).ok());
  ASSERT_TRUE(sink->Wait().ok());
  EXPECT_EQ(sink->ratios(), (std::vector<double>{0.25, 0.25, 0.5, 0.5, 0.5, 0.5}));
  EXPECT_EQ(sink->modes().back(), v1::MODE_ALERT);
}

TEST_F(SchedulerTest, ClientsReusingARequestIdGetSeparateGuardSessions) {
  std::mutex mu;
  std::map<std::string, std::set<uint32_t>> steps_by_session;
  std::set<std::string> request_ids;
  ScriptedGuard guard([&](const v1::StepReport& r) -> std::optional<v1::Directive> {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(steps_by_session[r.session_id()].insert(r.step()).second)
        << "two streams reported step " << r.step() << " under session " << r.session_id();
    return std::nullopt;
  });
  Scheduler scheduler(*model_, nullptr, {}, &guard, nullptr);
  auto a = std::make_shared<RecordingSink>(), b = std::make_shared<RecordingSink>();
  for (auto& sink : {a, b}) {
    ASSERT_TRUE(SubmitGuarded(scheduler, "same", Request(5, 0.25, 6), sink).ok());
  }
  ASSERT_TRUE(a->Wait().ok());
  ASSERT_TRUE(b->Wait().ok());
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(steps_by_session.size(), 2u);
}

TEST_F(SchedulerTest, CancellationEndsTheStreamAndFreesThePool) {
  auto arena = Pool(40 * Layers());
  Scheduler scheduler(*model_, nullptr, {.kv_arena = arena}, nullptr, nullptr);
  auto cancelled = std::make_shared<RecordingSink>(/*cancel_after=*/3);
  auto other = std::make_shared<RecordingSink>();
  ASSERT_TRUE(
      scheduler.Submit({.request_id = "c", .request = Request(2, 0, 200), .sink = cancelled}).ok());
  ASSERT_TRUE(
      scheduler.Submit({.request_id = "o", .request = Request(3, 0, 12), .sink = other}).ok());
  EXPECT_EQ(cancelled->Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(other->Wait().ok());
  EXPECT_EQ(other->ids().size(), 12u);
  scheduler.Drain(0ms);
  EXPECT_EQ(arena->pool->used_blocks(), 0);
}

}  // namespace
}  // namespace kvguard::server
