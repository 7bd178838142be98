// kvguard-bench-guard: what the guard costs a decode step. Runs the real
// scheduler in-process against a real kvguard-guard over loopback gRPC, at
// each batch size, unguarded, strict (lag 0) and lag 1, in one run, and
// reports the guard's share of the step time (p50/p99 of the step's guard
// wait and of the whole step).
//
//   build/bin/kvguard-bench-guard --model models/arith-lm --guard 127.0.0.1:50052 --batches 1,16
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/blas.h"
#include "common/svg_plot.h"
#include "services/engine/checkpoint.h"
#include "services/engine/llama_model.h"
#include "services/server/grpc_guard_link.h"
#include "services/server/scheduler.h"

ABSL_FLAG(std::string, model, "", "checkpoint (required)");
ABSL_FLAG(std::string, guard, "127.0.0.1:50052", "a running kvguard-guard");
ABSL_FLAG(std::string, batches, "1,16", "concurrent sequences per configuration");
ABSL_FLAG(int, tokens, 96, "tokens per sequence");
ABSL_FLAG(int, prompt_tokens, 64, "prompt length (random ids)");
ABSL_FLAG(int, deadline_ms, 200, "guard deadline per step");
ABSL_FLAG(int, threads, 1, "CPU intra-op threads");
ABSL_FLAG(std::string, out, "reports/bench", "report directory");

namespace {

using namespace kvguard;

class NullSink final : public server::ResponseSink {
 public:
  void Token(server::TokenEvent) override {}
  void Complete(server::CompletionEvent) override {}
  void Finish(const absl::Status&) override { done = true; }
  bool Cancelled() const override { return false; }
  std::atomic<bool> done{false};
};

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * (v.size() - 1))];
}

struct Row {
  std::string mode;
  int64_t batch;
  double step_p50_ms, step_p99_ms, guard_p50_ms, guard_p99_ms, guard_share, missed;
};

Row Run(engine::LlamaModel& model, server::GuardLink* link, int lag, int64_t batch) {
  std::mutex mu;
  std::vector<double> step_ms, guard_ms;
  int64_t missed = 0;
  server::SchedulerOptions so;
  so.max_concurrent = static_cast<int>(batch);
  so.guard_lag = lag;
  so.guard_deadline = std::chrono::milliseconds(absl::GetFlag(FLAGS_deadline_ms));
  so.on_step = [&](const server::StepTiming& t) {
    if (t.batch != batch) return;  // only full steps
    std::lock_guard<std::mutex> lock(mu);
    step_ms.push_back(1000 * (t.compute_s + t.guard_s));
    guard_ms.push_back(1000 * t.guard_s);
    missed += t.guard_missed;
  };
  std::vector<std::shared_ptr<NullSink>> sinks;
  {
    server::Scheduler scheduler(model, nullptr, so, link, nullptr);
    for (int64_t i = 0; i < batch; ++i) {
      server::Submission s;
      s.request_id = absl::StrFormat("bench-%d-%d-%d", lag, batch, i);
      for (int j = 0; j < absl::GetFlag(FLAGS_prompt_tokens); ++j) {
        s.request.prompt_ids.push_back(
            static_cast<int32_t>((i * 131 + j * 17) % (model.config().vocab_size - 3) + 3));
      }
      s.request.max_new_tokens = absl::GetFlag(FLAGS_tokens);
      s.request.ignore_eos = true;
      s.request.compression = {.compressor = "streaming_llm", .ratio = 0.5};
      s.guarded = link != nullptr;
      auto sink = std::make_shared<NullSink>();
      sinks.push_back(sink);
      s.sink = sink;
      (void)scheduler.Submit(std::move(s));
    }
    for (auto& sink : sinks) {
      while (!sink->done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    scheduler.Drain(std::chrono::milliseconds(0));
  }
  double step_total = 0, guard_total = 0;
  for (double v : step_ms) step_total += v;
  for (double v : guard_ms) guard_total += v;
  return {.mode = link == nullptr ? "unguarded" : (lag == 0 ? "strict" : "lag1"),
          .batch = batch,
          .step_p50_ms = Quantile(step_ms, 0.5),
          .step_p99_ms = Quantile(step_ms, 0.99),
          .guard_p50_ms = Quantile(guard_ms, 0.5),
          .guard_p99_ms = Quantile(guard_ms, 0.99),
          .guard_share = step_total > 0 ? guard_total / step_total : 0,
          .missed = step_ms.empty() ? 0 : double(missed) / step_ms.size()};
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists this binary's flags (absl matches only files named after the program).
  absl::SetFlagsUsageConfig({.contains_help_flags = [](absl::string_view) { return true; }});
  absl::ParseCommandLine(argc, argv);
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  SetBlasThreads(absl::GetFlag(FLAGS_threads));
  auto ckpt = engine::OpenCheckpoint(absl::GetFlag(FLAGS_model));
  if (!ckpt.ok()) {
    std::cerr << "kvguard-bench-guard: " << ckpt.status().message() << "\n";
    return 1;
  }
  auto model = engine::LlamaModel::Load(std::move(*ckpt), {});
  if (!model.ok()) {
    std::cerr << "kvguard-bench-guard: " << model.status().message() << "\n";
    return 1;
  }
  server::GrpcGuardLink link(absl::GetFlag(FLAGS_guard));
  for (int i = 0; i < 100 && !link.connected(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (!link.connected()) {
    std::cerr << "kvguard-bench-guard: no guard at " << absl::GetFlag(FLAGS_guard) << "\n";
    return 1;
  }
  std::vector<Row> rows;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',', absl::SkipEmpty())) {
    int64_t batch;
    if (!absl::SimpleAtoi(b, &batch) || batch < 1) return 2;
    rows.push_back(Run(**model, nullptr, 0, batch));
    rows.push_back(Run(**model, &link, 0, batch));
    rows.push_back(Run(**model, &link, 1, batch));
    std::cerr << "batch " << batch << " done\n";
  }
  std::string md =
      "| mode | batch | step p50 ms | step p99 ms | guard wait p50 ms | guard wait p99 ms | guard "
      "share of step | missed |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
  nlohmann::json j = nlohmann::json::array();
  for (const Row& r : rows) {
    absl::StrAppendFormat(&md, "| %s | %d | %.3f | %.3f | %.3f | %.3f | %.1f%% | %.1f%% |\n",
                          r.mode, r.batch, r.step_p50_ms, r.step_p99_ms, r.guard_p50_ms,
                          r.guard_p99_ms, 100 * r.guard_share, 100 * r.missed);
    j.push_back({{"mode", r.mode},
                 {"batch", r.batch},
                 {"step_p50_ms", r.step_p50_ms},
                 {"step_p99_ms", r.step_p99_ms},
                 {"guard_p50_ms", r.guard_p50_ms},
                 {"guard_p99_ms", r.guard_p99_ms},
                 {"guard_share", r.guard_share},
                 {"missed", r.missed}});
  }
  const std::string out = absl::GetFlag(FLAGS_out);
  std::filesystem::create_directories(out);
  (void)WriteTextFile(out + "/guard_overhead.json", j.dump(2));
  (void)WriteTextFile(out + "/guard_overhead.md", md);
  std::cout << md << "\nwritten to " << out << "/guard_overhead.{json,md}\n";
  return 0;
}
