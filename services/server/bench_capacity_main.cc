// kvguard-bench-capacity: what KV compression buys at a fixed memory budget.
// Runs the real scheduler in-process with one KV pool (--pool_sequences
// uncompressed sequences of the test bed's typical length), feeds it
// held-out few-shot word problems with open-loop arrivals, once per arm
// (ratio x static / guarded, the guard a real kvguard-guard over loopback
// gRPC), and reports concurrent sequences, saturated throughput, TTFT and
// queue time, preemptions, CFR and accuracy; then a 2x-overload burst.
//
//   build/bin/kvguard-bench-capacity --model models/arith-fewshot
//       --guard 127.0.0.1:50052 --ratios 0,0.5,0.75,0.875 --out reports/capacity
//
// scripts/bench_capacity.sh starts the guard and runs this.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/blas.h"
#include "common/file_util.h"
#include "common/heap.h"
#include "common/status_macros.h"
#include "common/svg_plot.h"
#include "research/problems.h"
#include "services/engine/checkpoint.h"
#include "services/engine/kv_layer_store.h"
#include "services/engine/llama_model.h"
#include "services/engine/tokenizer.h"
#include "services/server/grpc_guard_link.h"
#include "services/server/scheduler.h"

ABSL_FLAG(std::string, model, "models/arith-fewshot", "checkpoint with a training.json task");
ABSL_FLAG(std::string, guard, "",
          "a running kvguard-guard; `calm` = an in-process guard that never acts (to measure "
          "the server's guarded bookkeeping alone); empty = static arms only");
ABSL_FLAG(std::string, ratios, "0,0.5,0.75,0.875", "requested compression ratios");
ABSL_FLAG(std::string, compressor, "snapkv", "compressor of every compressed arm");
ABSL_FLAG(std::string, compressor_opt, "window_size=16", "its options, comma separated");
ABSL_FLAG(int, compress_every, 16,
          "evict in chunks: compress every N decode steps (0 = each step)");
ABSL_FLAG(int, requests, 64, "requests per arm (problems of --split)");
ABSL_FLAG(std::string, split, "test",
          "problems: test (held out; the reported runs) | val (for tuning guard settings)");
ABSL_FLAG(double, rate, 400,
          "open-loop Poisson arrivals per second (above what any arm serves: the fastest arm "
          "served ~20 requests/s on 2 cores in 2026-12)");
ABSL_FLAG(int, max_new_tokens, 192, "per request");
ABSL_FLAG(double, pool_sequences, 8,
          "KV pool = this many uncompressed sequences of typical length");
ABSL_FLAG(int, max_concurrent, 256, "the scheduler's upper bound (the pool decides below it)");
ABSL_FLAG(int, threads, 2, "CPU intra-op threads");
ABSL_FLAG(int, guard_lag, 0, "guarded arms: 0 = strict, 1 = directives one step later");
ABSL_FLAG(int, guard_interval, 1, "guarded arms: exchange with the guard every N steps");
ABSL_FLAG(bool, guard_overlap, true,
          "guarded arms at lag 0: wait for the answer after the next forward, not before it");
ABSL_FLAG(bool, burst, true, "also run the 2x-overload burst arms at ratio 0.75");
ABSL_FLAG(int, repeats, 3, "rounds over all arms; each arm reports its median round");
ABSL_FLAG(std::string, out, "reports/capacity", "report directory");

namespace {

using namespace kvguard;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0, Clock::time_point t) {
  return std::chrono::duration<double>(t - t0).count();
}

// What one request's client saw.
struct RequestLog {
  std::string id;
  double submit_s = -1, first_s = -1, done_s = -1;
  std::string status = "PENDING";
  bool rejected = false;  // refused at Submit (RESOURCE_EXHAUSTED), never started
  int64_t tokens = 0;
  bool catastrophic = false, correct = false;
  double kv_saved_frac = 0;
};

// `--guard calm`: a guard in this process that answers every batch at once,
// never directs and grants the longest quiet leave. Its guarded arms pay the
// server's own guarded bookkeeping (attention sums, top logprobs, reports)
// and none of the guard's work or the loopback, which tells the two apart.
class CalmGuardLink final : public server::GuardLink {
 public:
  void Send(v1::StepBatch) override {}
  std::optional<v1::DirectiveBatch> Await(uint64_t batch_id,
                                          std::chrono::steady_clock::time_point) override {
    v1::DirectiveBatch answer;
    answer.set_batch_id(batch_id);
    answer.set_quiet_steps(16);
    return answer;
  }
  [[nodiscard]] bool connected() const override { return true; }
};

class LoggingSink final : public server::ResponseSink {
 public:
  LoggingSink(RequestLog& log, Clock::time_point t0) : log_(log), t0_(t0) {}
  void Token(server::TokenEvent) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (log_.first_s < 0) log_.first_s = Since(t0_, Clock::now());
    ++log_.tokens;
  }
  void Complete(server::CompletionEvent c) override {
    std::lock_guard<std::mutex> lock(mu_);
    log_.catastrophic = c.outcome.looped || c.outcome.non_terminated;
    log_.correct = c.outcome.answer.has_value() && !c.outcome.wrong_answer;
    const double total = double(c.kv_bytes + c.kv_bytes_saved);
    log_.kv_saved_frac = total > 0 ? double(c.kv_bytes_saved) / total : 0;
  }
  void Finish(const absl::Status& s) override {
    std::lock_guard<std::mutex> lock(mu_);
    log_.status = absl::StatusCodeToString(s.code());
    log_.done_s = Since(t0_, Clock::now());
    done_ = true;
    cv_.notify_all();
  }
  bool Cancelled() const override { return false; }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }

 private:
  RequestLog& log_;
  Clock::time_point t0_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

struct Arm {
  double ratio = 0;
  bool guarded = false;
  int requests = 0;
  int max_queue = 0;
  double rate = 0;  // <= 0: all at once (a burst)
  std::string name;
};

struct ArmResult {
  Arm arm;
  std::vector<RequestLog> logs;
  double mean_concurrent = 0, max_concurrent = 0, makespan_s = 0, tokens_per_s = 0;
  double decode_tokens_per_s = 0;  // over decode-only steps (prefill excluded)
  double guard_share = 0;          // of step time spent exchanging with the guard
  int64_t steps = 0, step_rows = 0, prefill_steps = 0;  // the forward work: same work, same cost
  int64_t guard_exchanges = 0;                          // answers applied (round trips)
  double ttft_p50 = 0, ttft_p90 = 0, ttft_p99 = 0, queue_mean_s = 0;
  int64_t preemptions = 0, completed = 0, rejected = 0, failed_mid_stream = 0;
  double cfr = 0, accuracy = 0, kv_saved = 0;
};

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * double(v.size() - 1))];
}

struct Testbed {
  engine::LlamaModel* model;
  const engine::Tokenizer* tokenizer;
  std::vector<research::Problem> problems;
  std::vector<std::vector<int32_t>> prompts;
  int64_t pool_bytes = 0;
  server::GuardLink* guard = nullptr;
};

// Concurrency is sampled per step while requests were waiting: the
// saturated regime the pool decides.
struct StepSampler {
  std::mutex mu;
  double weighted = 0, time = 0, max = 0;
  double decode_rows = 0, decode_s = 0;  // steps without a prefill: the decode rate
  double compute_s = 0, guard_s = 0;     // all steps: forward..emit, and the guard exchange
  int64_t steps = 0, rows = 0, prefill_steps = 0;
  Clock::time_point last = Clock::now();
  void Add(const server::StepTiming& t, bool saturated) {
    std::lock_guard<std::mutex> lock(mu);
    const int64_t batch = t.batch;
    ++steps;
    rows += batch;
    prefill_steps += t.prefills > 0;
    compute_s += t.compute_s;
    guard_s += t.guard_s;
    if (t.prefills == 0) {
      decode_rows += double(batch);
      decode_s += t.compute_s + t.guard_s;
    }
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    max = std::max(max, double(batch));
    if (!saturated) return;
    weighted += dt * double(batch);
    time += dt;
  }
};

engine::GenerateRequest MakeRequest(const Testbed& bed, size_t i, const Arm& arm) {
  engine::GenerateRequest r;
  r.prompt_ids = bed.prompts[i % bed.prompts.size()];
  r.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  if (arm.ratio > 0) {
    r.compression.compressor = absl::GetFlag(FLAGS_compressor);
    r.compression.ratio = arm.ratio;
    r.compression.compress_every = absl::GetFlag(FLAGS_compress_every);
    for (absl::string_view o :
         absl::StrSplit(absl::GetFlag(FLAGS_compressor_opt), ',', absl::SkipEmpty()))
      r.compression.options.emplace_back(o);
  }
  return r;
}

// Submits the arm's requests at their arrival times; returns when all ended.
void Drive(const Testbed& bed, const Arm& arm, server::Scheduler& scheduler, Clock::time_point t0,
           std::vector<RequestLog>& logs) {
  std::mt19937_64 rng(7);
  std::exponential_distribution<double> gap(arm.rate > 0 ? arm.rate : 1.0);
  std::vector<std::shared_ptr<LoggingSink>> sinks;
  double at = 0;
  for (int i = 0; i < arm.requests; ++i) {
    if (arm.rate > 0) {
      at += gap(rng);
      std::this_thread::sleep_until(
          t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(at)));
    }
    RequestLog& log = logs[i];
    log.id = bed.problems[i % bed.problems.size()].id;
    log.submit_s = Since(t0, Clock::now());
    auto sink = std::make_shared<LoggingSink>(log, t0);
    absl::Status s =
        scheduler.Submit({.request_id = absl::StrCat(arm.name, "-", i),
                          .request = MakeRequest(bed, i, arm),
                          .guarded = arm.guarded,
                          .gold_answer = absl::StrCat(bed.problems[i % bed.problems.size()].answer),
                          .sink = sink});
    if (!s.ok()) {
      log.rejected = true;
      log.status = absl::StatusCodeToString(s.code());
      continue;
    }
    sinks.push_back(sink);
  }
  for (auto& sink : sinks) sink->Wait();
}

void Summarize(ArmResult& r, double queue_mean_s) {
  std::vector<double> ttft;
  int64_t tokens = 0, catastrophic = 0, correct = 0;
  double first = 1e300, last = 0, saved = 0;
  for (const RequestLog& l : r.logs) {
    if (l.rejected) {
      ++r.rejected;
      continue;
    }
    if (l.status != "OK") {
      ++r.failed_mid_stream;
      continue;
    }
    ++r.completed;
    ttft.push_back(l.first_s - l.submit_s);
    tokens += l.tokens;
    catastrophic += l.catastrophic;
    correct += l.correct;
    saved += l.kv_saved_frac;
    first = std::min(first, l.submit_s);
    last = std::max(last, l.done_s);
  }
  r.makespan_s = r.completed ? last - first : 0;
  r.tokens_per_s = r.makespan_s > 0 ? double(tokens) / r.makespan_s : 0;
  r.ttft_p50 = Quantile(ttft, 0.5);
  r.ttft_p90 = Quantile(ttft, 0.9);
  r.ttft_p99 = Quantile(ttft, 0.99);
  r.queue_mean_s = queue_mean_s;
  const double n = std::max<double>(1, double(r.completed));
  r.cfr = double(catastrophic) / n;
  r.accuracy = double(correct) / n;
  r.kv_saved = saved / n;
}

ArmResult RunArm(const Testbed& bed, const Arm& arm) {
  ArmResult result{.arm = arm};
  result.logs.resize(static_cast<size_t>(arm.requests));
  const engine::KvCacheOptions c = bed.model->CacheOptions();
  auto arena = engine::NewKvArena(
      {.kv_heads = c.num_kv_heads, .head_dim = c.head_dim, .dtype = c.dtype, .device = c.device},
      bed.pool_bytes, 16);
  if (!arena.ok()) {
    std::cerr << arena.status() << "\n";
    std::exit(1);
  }
  StepSampler sampler;
  std::atomic<server::Scheduler*> sched{nullptr};
  server::SchedulerOptions so{.max_concurrent = absl::GetFlag(FLAGS_max_concurrent),
                              .max_queue = arm.max_queue,
                              .guard_deadline = std::chrono::milliseconds(200),
                              .guard_lag = absl::GetFlag(FLAGS_guard_lag),
                              .guard_interval = absl::GetFlag(FLAGS_guard_interval),
                              .guard_overlap = absl::GetFlag(FLAGS_guard_overlap),
                              .guard_probe_tokens = arm.guarded ? 16 : 0,
                              .kv_arena = *arena};
  so.on_step = [&](const server::StepTiming& t) {
    server::Scheduler* s = sched.load();
    sampler.Add(t, s != nullptr && s->stats().queued > 0);
  };
  server::ServerMetrics metrics;
  const auto t0 = Clock::now();
  {
    server::Scheduler scheduler(*bed.model, bed.tokenizer, so, arm.guarded ? bed.guard : nullptr,
                                &metrics);
    sched = &scheduler;
    Drive(bed, arm, scheduler, t0, result.logs);
    result.preemptions = scheduler.stats().preemptions;
    sched = nullptr;
    scheduler.Drain(std::chrono::milliseconds(0));
  }
  result.mean_concurrent = sampler.time > 0 ? sampler.weighted / sampler.time : 0;
  result.max_concurrent = sampler.max;
  result.guard_share = sampler.guard_s / std::max(1e-9, sampler.guard_s + sampler.compute_s);
  result.decode_tokens_per_s = sampler.decode_s > 0 ? sampler.decode_rows / sampler.decode_s : 0;
  result.steps = sampler.steps;
  result.step_rows = sampler.rows;
  result.prefill_steps = sampler.prefill_steps;
  double queue_mean = 0;
  for (const auto& family : metrics.registry()->Collect()) {
    if (family.name == "kvguard_guard_round_trip_seconds" && !family.metric.empty())
      result.guard_exchanges = static_cast<int64_t>(family.metric[0].histogram.sample_count);
    if (family.name != "kvguard_queue_time_seconds" || family.metric.empty()) continue;
    const auto& h = family.metric[0].histogram;
    queue_mean = h.sample_count ? h.sample_sum / double(h.sample_count) : 0;
  }
  Summarize(result, queue_mean);
  return result;
}

absl::StatusOr<research::ProblemOptions> TaskOf(const std::string& model) {
  const std::string path = (std::filesystem::path(model) / "training.json").string();
  KVG_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  nlohmann::json record = nlohmann::json::parse(text, nullptr, false);
  if (!record.is_object() || !record.contains("problem_options"))
    return absl::InvalidArgumentError(path + " has no problem_options");
  return research::OptionsFromJson(record["problem_options"]);
}

std::string ArmName(double ratio, bool guarded) {
  return ratio == 0 ? "uncompressed"
                    : absl::StrFormat("%s %.4g", guarded ? "guarded" : "static", ratio);
}

nlohmann::json ArmJson(const ArmResult& r) {
  return {{"arm", r.arm.name},
          {"ratio", r.arm.ratio},
          {"guarded", r.arm.guarded},
          {"requests", r.arm.requests},
          {"rate", r.arm.rate},
          {"max_queue", r.arm.max_queue},
          {"mean_concurrent", r.mean_concurrent},
          {"max_concurrent", r.max_concurrent},
          {"tokens_per_s", r.tokens_per_s},
          {"decode_tokens_per_s", r.decode_tokens_per_s},
          {"guard_share", r.guard_share},
          {"steps", r.steps},
          {"step_rows", r.step_rows},
          {"prefill_steps", r.prefill_steps},
          {"guard_exchanges", r.guard_exchanges},
          {"makespan_s", r.makespan_s},
          {"ttft_p50_s", r.ttft_p50},
          {"ttft_p90_s", r.ttft_p90},
          {"ttft_p99_s", r.ttft_p99},
          {"queue_mean_s", r.queue_mean_s},
          {"preemptions", r.preemptions},
          {"completed", r.completed},
          {"rejected", r.rejected},
          {"failed_mid_stream", r.failed_mid_stream},
          {"cfr", r.cfr},
          {"accuracy", r.accuracy},
          {"kv_saved", r.kv_saved}};
}

void WriteRequestsCsv(const std::vector<ArmResult>& results, const std::string& path) {
  std::ofstream csv(path);
  csv << "arm,i,prompt_id,status,rejected,submit_s,first_token_s,done_s,tokens,catastrophic,"
         "correct,kv_saved\n";
  for (const ArmResult& r : results) {
    for (size_t i = 0; i < r.logs.size(); ++i) {
      const RequestLog& l = r.logs[i];
      csv << absl::StrFormat("%s,%d,%s,%s,%d,%.4f,%.4f,%.4f,%d,%d,%d,%.4f\n", r.arm.name, i, l.id,
                             l.status, l.rejected, l.submit_s, l.first_s, l.done_s, l.tokens,
                             l.catastrophic, l.correct, l.kv_saved_frac);
    }
  }
}

// Concurrency and throughput against the ratio, relative to the first (uncompressed) arm.
PlotSpec CapacityPlot(const std::vector<ArmResult>& results) {
  const ArmResult& base = results.front();
  PlotSpec conc{.title = "Concurrent sequences and throughput at one KV pool",
                .x_label = "requested ratio",
                .y_label = "x uncompressed"};
  for (bool guarded : {false, true}) {
    PlotSeries c{.name = guarded ? "guarded: concurrency" : "static: concurrency"};
    PlotSeries t{.name = guarded ? "guarded: tokens/s" : "static: tokens/s"};
    for (const ArmResult& r : results) {
      if (r.arm.rate <= 0 || (r.arm.guarded != guarded && r.arm.ratio > 0)) continue;
      c.x.push_back(r.arm.ratio);
      c.y.push_back(r.mean_concurrent / std::max(1e-9, base.mean_concurrent));
      t.x.push_back(r.arm.ratio);
      t.y.push_back(r.tokens_per_s / std::max(1e-9, base.tokens_per_s));
    }
    if (c.x.size() > 1) {
      conc.series.push_back(c);
      conc.series.push_back(t);
    }
  }
  return conc;
}

// Two tables: capacity (what the pool buys) and service (what clients see).
std::string Markdown(const std::vector<ArmResult>& results, const Testbed& bed,
                     int64_t typical_tokens) {
  const ArmResult& base = results.front();
  std::string md = absl::StrFormat(
      "KV pool %.2f MiB = %.3g uncompressed sequences of %d tokens (mean prompt + %d new); %s "
      "(%s problems), "
      "compressor %s (%s), compress every %d steps; %d threads; guarded arms at guard lag %d%s, "
      "exchange every %d steps (up to %d while the guard's sessions are calm: its quiet_steps; "
      "capacity.json counts the exchanges)%s\n\n",
      bed.pool_bytes / 1048576.0, absl::GetFlag(FLAGS_pool_sequences), typical_tokens,
      absl::GetFlag(FLAGS_max_new_tokens), absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_split),
      absl::GetFlag(FLAGS_compressor), absl::GetFlag(FLAGS_compressor_opt),
      absl::GetFlag(FLAGS_compress_every), absl::GetFlag(FLAGS_threads),
      absl::GetFlag(FLAGS_guard_lag),
      absl::GetFlag(FLAGS_guard_overlap) ? " (overlapped with the next forward)" : "",
      absl::GetFlag(FLAGS_guard_interval), server::kMaxGuardQuietSteps,
      absl::GetFlag(FLAGS_guard) == "calm"
          ? "; the guard is `calm`: in-process, answers at once, never acts"
          : "");
  md +=
      "| arm | requests | arrivals/s | concurrent mean | vs uncompressed | max | tokens/s | vs "
      "uncompressed "
      "| decode tokens/s | vs uncompressed | KV saved |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  std::string service =
      "\n| arm | TTFT p50 s | p90 | p99 | queue mean s | preemptions | completed | refused at "
      "admission "
      "| failed mid-stream | CFR | accuracy |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  auto vs = [](double x, double b) { return absl::StrFormat("%.2fx", x / std::max(1e-9, b)); };
  for (const ArmResult& r : results) {
    absl::StrAppendFormat(
        &md, "| %s | %d | %s | %.1f | %s | %.0f | %.0f | %s | %.0f | %s | %.2f |\n", r.arm.name,
        r.arm.requests, r.arm.rate > 0 ? absl::StrFormat("%.0f", r.arm.rate) : "burst",
        r.mean_concurrent, vs(r.mean_concurrent, base.mean_concurrent), r.max_concurrent,
        r.tokens_per_s, vs(r.tokens_per_s, base.tokens_per_s), r.decode_tokens_per_s,
        vs(r.decode_tokens_per_s, base.decode_tokens_per_s), r.kv_saved);
    absl::StrAppendFormat(
        &service, "| %s | %.2f | %.2f | %.2f | %.2f | %d | %d | %d | %d | %.3f | %.3f |\n",
        r.arm.name, r.ttft_p50, r.ttft_p90, r.ttft_p99, r.queue_mean_s, r.preemptions, r.completed,
        r.rejected, r.failed_mid_stream, r.cfr, r.accuracy);
  }
  return md + service;
}

// Guarded against static at the same ratio (and burst), round by round: the
// two ran next to each other, so their ratio cancels most of the machine's
// drift that the medians of separate arms keep (medians moved 10-30% between
// runs on the 2-core VM).
struct PairedRatio {
  std::string guarded_arm, static_arm;
  std::vector<double> tokens, decode;  // per round, guarded / static
};

std::vector<PairedRatio> PairGuardedWithStatic(const std::vector<Arm>& arms,
                                               const std::vector<std::vector<ArmResult>>& runs) {
  std::vector<PairedRatio> pairs;
  for (size_t g = 0; g < arms.size(); ++g) {
    if (!arms[g].guarded) continue;
    for (size_t s = 0; s < arms.size(); ++s) {
      if (arms[s].guarded || arms[s].ratio != arms[g].ratio || arms[s].rate != arms[g].rate)
        continue;
      PairedRatio p{.guarded_arm = arms[g].name, .static_arm = arms[s].name};
      for (size_t k = 0; k < std::min(runs[g].size(), runs[s].size()); ++k) {
        p.tokens.push_back(runs[g][k].tokens_per_s / std::max(1e-9, runs[s][k].tokens_per_s));
        p.decode.push_back(runs[g][k].decode_tokens_per_s /
                           std::max(1e-9, runs[s][k].decode_tokens_per_s));
      }
      pairs.push_back(std::move(p));
      break;
    }
  }
  return pairs;
}

std::string PairedMarkdown(const std::vector<PairedRatio>& pairs) {
  if (pairs.empty()) return "";
  auto summary = [](const std::vector<double>& v) {
    return absl::StrFormat("%.2fx [%.2f, %.2f]", Quantile(v, 0.5),
                           *std::min_element(v.begin(), v.end()),
                           *std::max_element(v.begin(), v.end()));
  };
  std::string md =
      "\nGuarded against static, paired by round (median [min, max] over rounds):\n\n"
      "| guarded arm | static arm | rounds | tokens/s vs static | decode tokens/s vs static |\n"
      "| --- | --- | --- | --- | --- |\n";
  for (const PairedRatio& p : pairs) {
    if (p.tokens.empty()) continue;
    absl::StrAppendFormat(&md, "| %s | %s | %d | %s | %s |\n", p.guarded_arm, p.static_arm,
                          p.tokens.size(), summary(p.tokens), summary(p.decode));
  }
  return md;
}

void WriteReport(const std::vector<ArmResult>& results, const std::vector<PairedRatio>& pairs,
                 const Testbed& bed, int64_t typical_tokens) {
  const std::string out = absl::GetFlag(FLAGS_out);
  std::filesystem::create_directories(out);
  const std::string md = Markdown(results, bed, typical_tokens) + PairedMarkdown(pairs);
  nlohmann::json j = nlohmann::json::array();
  for (const ArmResult& r : results) {
    nlohmann::json arm = ArmJson(r);
    for (const PairedRatio& p : pairs) {
      if (p.guarded_arm != r.arm.name) continue;
      arm["paired_with"] = p.static_arm;
      arm["paired_tokens_per_s_ratio_by_round"] = p.tokens;
      arm["paired_decode_tokens_per_s_ratio_by_round"] = p.decode;
    }
    j.push_back(std::move(arm));
  }
  (void)WriteTextFile(out + "/capacity.md", md);
  (void)WriteTextFile(out + "/capacity.json", j.dump(2));
  WriteRequestsCsv(results, out + "/requests.csv");
  (void)WriteSvgPlot(CapacityPlot(results), out + "/capacity.svg");
  std::cout << md << "\nwritten to " << out << "/capacity.{md,json,svg}, requests.csv\n";
}

// Every requested ratio static, and guarded where a guard is given; then the
// 2x-overload burst at 0.75 (twice what the queue takes, all at once) unless --noburst.
absl::StatusOr<std::vector<Arm>> MakeArms(int requests, bool with_guard) {
  std::vector<Arm> arms;
  const double rate = absl::GetFlag(FLAGS_rate);
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_ratios), ',', absl::SkipEmpty())) {
    double ratio;
    if (!absl::SimpleAtod(s, &ratio) || ratio < 0 || ratio >= 1)
      return absl::InvalidArgumentError("bad --ratios");
    for (bool guarded : {false, true}) {
      if (guarded && (ratio == 0 || !with_guard)) continue;
      arms.push_back({.ratio = ratio,
                      .guarded = guarded,
                      .requests = requests,
                      .max_queue = requests,
                      .rate = rate,
                      .name = ArmName(ratio, guarded)});
    }
  }
  for (bool guarded : {false, true}) {
    if (!absl::GetFlag(FLAGS_burst) || (guarded && !with_guard)) continue;
    arms.push_back({.ratio = 0.75,
                    .guarded = guarded,
                    .requests = requests,
                    .max_queue = requests / 2,
                    .rate = 0,
                    .name = ArmName(0.75, guarded) + " burst 2x"});
  }
  return arms;
}

// Rounds interleave the arms so drift on a shared machine hits all alike.
// Returns every arm's rounds in the order they ran.
std::vector<std::vector<ArmResult>> RunRounds(const Testbed& bed, const std::vector<Arm>& arms) {
  const int rounds = std::max(1, absl::GetFlag(FLAGS_repeats));
  std::vector<std::vector<ArmResult>> runs(arms.size());
  const auto start = Clock::now();
  const size_t total = arms.size() * static_cast<size_t>(rounds);
  for (size_t k = 0; k < total; ++k) {
    const size_t i = k % arms.size();
    runs[i].push_back(RunArm(bed, arms[i]));
    const double elapsed = Since(start, Clock::now());
    std::cerr << absl::StrFormat(
        "[%d/%d] %-22s concurrent %.1f, %.0f tok/s, guard %.0f%% of step time, CFR %.3f  (%.0fs, "
        "ETA %.0fs)\n",
        k + 1, total, arms[i].name, runs[i].back().mean_concurrent, runs[i].back().tokens_per_s,
        100 * runs[i].back().guard_share, runs[i].back().cfr, elapsed,
        elapsed / double(k + 1) * double(total - k - 1));
  }
  return runs;
}

// Each arm's median round by tokens/s.
std::vector<ArmResult> MedianRounds(std::vector<std::vector<ArmResult>> runs) {
  std::vector<ArmResult> results;
  for (auto& r : runs) {
    std::sort(r.begin(), r.end(), [](const ArmResult& a, const ArmResult& b) {
      return a.tokens_per_s < b.tokens_per_s;
    });
    results.push_back(r[r.size() / 2]);
  }
  return results;
}

int Fail(const std::string& m) {
  std::cerr << "kvguard-bench-capacity: " << m << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  kvguard::KeepFreedBlocksInHeap();
  absl::SetFlagsUsageConfig({.contains_help_flags = [](absl::string_view) { return true; }});
  absl::ParseCommandLine(argc, argv);
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  SetBlasThreads(absl::GetFlag(FLAGS_threads));
  const std::string model_path = absl::GetFlag(FLAGS_model);
  auto ckpt = engine::OpenCheckpoint(model_path);
  if (!ckpt.ok()) return Fail(std::string(ckpt.status().message()));
  auto tokenizer = engine::Tokenizer::Load(ckpt->tokenizer_path);
  if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));
  auto model = engine::LlamaModel::Load(std::move(*ckpt), {});
  if (!model.ok()) return Fail(std::string(model.status().message()));
  auto task = TaskOf(model_path);
  if (!task.ok()) return Fail(std::string(task.status().message()));
  const int requests = absl::GetFlag(FLAGS_requests);
  auto split = research::ParseSplit(absl::GetFlag(FLAGS_split));
  if (!split.ok()) return Fail(std::string(split.status().message()));
  auto problems = research::GenerateProblems(*task, *split, 0, requests);
  if (!problems.ok()) return Fail(std::string(problems.status().message()));

  Testbed bed{.model = model->get(), .tokenizer = tokenizer->get(), .problems = *problems};
  int64_t prompt_tokens = 0;
  for (const auto& p : bed.problems) {
    auto ids = (*tokenizer)->Encode(p.prompt);
    if (!ids.ok()) return Fail(std::string(ids.status().message()));
    bed.prompts.push_back(std::move(*ids));
    prompt_tokens += static_cast<int64_t>(bed.prompts.back().size());
  }
  const int64_t typical = prompt_tokens / requests + absl::GetFlag(FLAGS_max_new_tokens);
  const engine::KvCacheOptions c = (*model)->CacheOptions();
  const int64_t token_bytes =
      c.num_layers *
      engine::TokenBytes({.kv_heads = c.num_kv_heads, .head_dim = c.head_dim, .dtype = c.dtype});
  bed.pool_bytes =
      static_cast<int64_t>(absl::GetFlag(FLAGS_pool_sequences) * double(typical * token_bytes));

  std::unique_ptr<server::GuardLink> link;
  if (absl::GetFlag(FLAGS_guard) == "calm") {
    link = std::make_unique<CalmGuardLink>();
    bed.guard = link.get();
  } else if (!absl::GetFlag(FLAGS_guard).empty()) {
    link = std::make_unique<server::GrpcGuardLink>(absl::GetFlag(FLAGS_guard));
    for (int i = 0; i < 100 && !link->connected(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!link->connected()) return Fail("no guard at " + absl::GetFlag(FLAGS_guard));
    bed.guard = link.get();
  }
  auto arms = MakeArms(requests, link != nullptr);
  if (!arms.ok()) return Fail(std::string(arms.status().message()));
  const auto runs = RunRounds(bed, *arms);
  WriteReport(MedianRounds(runs), PairGuardedWithStatic(*arms, runs), bed, typical);
  return 0;
}
