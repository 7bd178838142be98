// The research loop's commands: sweep (traces), train-predictor (hazard
// model), each with progress and a written report.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "research/pipeline/evaluate.h"
#include "research/pipeline/frontier.h"
#include "research/pipeline/predictor.h"
#include "research/pipeline/prefill_risk.h"
#include "research/pipeline/sweep.h"
#include "research/pipeline/traces.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"
#include "services/cli/progress.h"
#include "services/engine/sampler.h"

namespace kvguard::cli {

absl::StatusOr<research::ProblemOptions> ProblemOptionsFrom(
    const std::vector<std::string>& overrides);

namespace {

// Where this kvguard binary lives (kvguard-server / kvguard-guard sit beside it).
std::string BinaryDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "build/bin";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

absl::StatusOr<std::vector<double>> Doubles(const std::string& text) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double v;
    if (!absl::SimpleAtod(part, &v))
      return absl::InvalidArgumentError(absl::StrCat("bad number '", part, "'"));
    out.push_back(v);
  }
  return out;
}

// The compressor grid flags shared by sweep and prefill-risk (absent flags
// keep the defaults).
absl::Status GridFromArgs(const CliArgs& args, std::vector<std::string>& compressors,
                          std::vector<double>& ratios, std::vector<std::string>& options) {
  if (args.Has("compressors"))
    compressors = absl::StrSplit(args.Get("compressors"), ',', absl::SkipEmpty());
  if (args.Has("ratios")) {
    KVG_ASSIGN_OR_RETURN(ratios, Doubles(args.Get("ratios")));
  }
  options = args.GetAll("compressor-opt");
  return absl::OkStatus();
}

// The prompt-set flags shared by sweep and prefill-risk.
absl::StatusOr<research::PromptSetSpec> PromptSetFromArgs(const CliArgs& args) {
  research::PromptSetSpec ps;
  ps.dataset = args.Get("dataset", "arith");
  KVG_ASSIGN_OR_RETURN(ps.count, args.GetInt("prompts", 100));
  KVG_ASSIGN_OR_RETURN(ps.first, args.GetInt("first-prompt", 0));
  KVG_ASSIGN_OR_RETURN(ps.split, research::ParseSplit(args.Get("split", "test")));
  KVG_ASSIGN_OR_RETURN(ps.problem_options, ProblemOptionsFrom(args.GetAll("problem-opt")));
  ps.data_dir = args.Get("data-dir", "");
  KVG_ASSIGN_OR_RETURN(int64_t shots, args.GetInt("shots", 8));
  ps.shots = static_cast<int>(shots);
  if (ps.dataset == "gsm8k" && ps.data_dir.empty()) {
    return absl::InvalidArgumentError("--dataset gsm8k needs --data-dir (train.jsonl, test.jsonl)");
  }
  return ps;
}

}  // namespace

absl::Status RunSweepCommand(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(
      args.Parse(argc, argv,
                 {"model", "out", "compressors", "ratios", "compressor-opt", "prompts",
                  "first-prompt", "split", "problem-opt", "max-new-tokens", "batch", "threads",
                  "dataset", "data-dir", "shots", "repetition-penalty", "no-repeat-ngram"},
                 {}));
  research::SweepOptions o;
  KVG_ASSIGN_OR_RETURN(o.model_path, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(o.out_dir, args.Require("out"));
  KVG_RETURN_IF_ERROR(GridFromArgs(args, o.compressors, o.ratios, o.compressor_options));
  KVG_ASSIGN_OR_RETURN(o.prompt_set, PromptSetFromArgs(args));
  KVG_ASSIGN_OR_RETURN(int64_t max_new, args.GetInt("max-new-tokens", 256));
  KVG_ASSIGN_OR_RETURN(int64_t batch, args.GetInt("batch", 16));
  KVG_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  o.max_new_tokens = static_cast<int>(max_new);
  KVG_ASSIGN_OR_RETURN(o.repetition_penalty, args.GetDouble("repetition-penalty", 1.0));
  KVG_ASSIGN_OR_RETURN(int64_t no_repeat, args.GetInt("no-repeat-ngram", 0));
  o.no_repeat_ngram = static_cast<int>(std::clamp<int64_t>(no_repeat, -1, 1 << 20));
  KVG_RETURN_IF_ERROR(engine::ValidateSamplingParams(
      {.repetition_penalty = o.repetition_penalty, .no_repeat_ngram = o.no_repeat_ngram}));
  o.batch = static_cast<int>(batch);
  o.threads = static_cast<int>(threads);
  Progress progress("sweep traces");
  KVG_RETURN_IF_ERROR(research::RunSweep(o, [&](int64_t d, int64_t t) { progress.Update(d, t); }));
  std::cout << "traces written to " << o.out_dir << " (schema: research/pipeline/TRACES.md)\n";
  return absl::OkStatus();
}

// `kvguard prefill-risk`: the question attention each compressor's prefill
// would evict, per prompt and ratio (research/pipeline/prefill_risk.h).
absl::Status RunPrefillRiskCommand(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(
      argc, argv,
      {"model", "out", "compressors", "ratios", "compressor-opt", "prompts", "first-prompt",
       "split", "problem-opt", "threads", "dataset", "data-dir", "shots"},
      {}));
  research::PrefillRiskOptions o;
  KVG_ASSIGN_OR_RETURN(o.model_path, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(o.out_path, args.Require("out"));
  KVG_RETURN_IF_ERROR(GridFromArgs(args, o.compressors, o.ratios, o.compressor_options));
  KVG_ASSIGN_OR_RETURN(o.prompt_set, PromptSetFromArgs(args));
  KVG_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  o.threads = static_cast<int>(threads);
  Progress progress("prefill-risk prefills");
  KVG_RETURN_IF_ERROR(
      research::RunPrefillRisk(o, [&](int64_t d, int64_t t) { progress.Update(d, t); }));
  std::cout << "written to " << o.out_path << "\n";
  return absl::OkStatus();
}

absl::Status RunTrainPredictor(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(
      argc, argv,
      {"traces", "out", "horizon", "seed", "rounds", "max-depth", "eta", "threads", "target-fpr"},
      {}));
  research::PredictorOptions o;
  KVG_ASSIGN_OR_RETURN(o.traces_dir, args.Require("traces"));
  KVG_ASSIGN_OR_RETURN(o.out_dir, args.Require("out"));
  KVG_ASSIGN_OR_RETURN(int64_t horizon, args.GetInt("horizon", 32));
  KVG_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  KVG_ASSIGN_OR_RETURN(int64_t rounds, args.GetInt("rounds", 300));
  KVG_ASSIGN_OR_RETURN(int64_t depth, args.GetInt("max-depth", 6));
  KVG_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 2));
  KVG_ASSIGN_OR_RETURN(o.params.eta, args.GetDouble("eta", 0.1));
  KVG_ASSIGN_OR_RETURN(o.target_fpr, args.GetDouble("target-fpr", 0.05));
  o.horizon = static_cast<int>(horizon);
  o.seed = static_cast<uint64_t>(seed);
  o.params.rounds = static_cast<int>(rounds);
  o.params.max_depth = static_cast<int>(depth);
  o.params.train_threads = static_cast<int>(threads);
  o.params.scale_pos_weight = 0;  // auto: negatives / positives
  o.params.seed = o.seed;
  std::string summary;
  std::cerr << "train-predictor: training 4 ablations + leave-one-compressor-out folds...\n";
  KVG_RETURN_IF_ERROR(research::TrainPredictor(o, &summary));
  std::cout << summary << "\nmodel: " << o.out_dir << "/hazard.json; report: " << o.out_dir
            << "/report.{md,json}, roc.svg\n";
  return absl::OkStatus();
}

}  // namespace kvguard::cli

namespace kvguard::cli {

absl::Status RunEvaluate(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(
      args.Parse(argc, argv,
                 {"model", "traces", "predictor", "out", "config", "concurrency", "max-new-tokens",
                  "bin-dir", "seed", "target-fpr", "fpr-scope", "admission"},
                 {"live"}));
  research::EvaluateOptions o;
  KVG_ASSIGN_OR_RETURN(o.traces_dir, args.Require("traces"));
  KVG_ASSIGN_OR_RETURN(o.predictor_dir, args.Require("predictor"));
  KVG_ASSIGN_OR_RETURN(o.out_dir, args.Require("out"));
  o.model_dir = args.Get("model");
  o.controller_config = args.Get("config");
  o.live = args.Has("live");
  if (o.live && o.model_dir.empty()) return absl::InvalidArgumentError("--live needs --model");
  o.bin_dir = args.Get("bin-dir", BinaryDir());
  KVG_ASSIGN_OR_RETURN(int64_t concurrency, args.GetInt("concurrency", 8));
  KVG_ASSIGN_OR_RETURN(int64_t max_new, args.GetInt("max-new-tokens", 256));
  KVG_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  KVG_ASSIGN_OR_RETURN(o.target_fpr, args.GetDouble("target-fpr", 0.05));
  o.concurrency = static_cast<int>(concurrency);
  o.max_new_tokens = static_cast<int>(max_new);
  o.seed = static_cast<uint64_t>(seed);
  const std::string scope = args.Get("fpr-scope", "per-config");
  if (scope != "per-config" && scope != "pooled") {
    return absl::InvalidArgumentError("--fpr-scope must be per-config or pooled");
  }
  o.fpr_per_config = scope == "per-config";
  const std::string admission = args.Get("admission", "on");
  if (admission != "on" && admission != "off") {
    return absl::InvalidArgumentError("--admission must be on or off");
  }
  o.admission = admission == "on";
  std::string summary;
  std::cerr << "evaluate: offline simulation" << (o.live ? " + live closed-loop runs" : "")
            << "...\n";
  Progress progress("evaluate live runs");
  KVG_RETURN_IF_ERROR(
      research::Evaluate(o, &summary, [&](int64_t d, int64_t t) { progress.Update(d, t); }));
  std::cout << summary << "\nwritten to " << o.out_dir
            << "/evaluation.{md,json,csv}, cfr_vs_ratio_*.svg\n";
  return absl::OkStatus();
}

// `kvguard frontier`: static policies (from a sweep's traces and/or live
// records) and guard policies (live records) on the savings/CFR frontier.
absl::Status RunFrontier(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(
      argc, argv, {"traces", "records", "prompts", "seed", "measure", "resamples", "out"}, {}));
  KVG_ASSIGN_OR_RETURN(std::string out, args.Require("out"));
  if (!args.Has("traces") && !args.Has("records"))
    return absl::InvalidArgumentError("give --traces and/or --records");
  research::FrontierReportOptions o{.out_dir = out};
  KVG_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  KVG_ASSIGN_OR_RETURN(int64_t resamples, args.GetInt("resamples", 2000));
  if (resamples < 100) return absl::InvalidArgumentError("--resamples must be >= 100");
  o.frontier.seed = static_cast<uint64_t>(seed);
  o.frontier.resamples = static_cast<int>(resamples);
  const std::string measure = args.Get("measure", "integrated");
  if (measure != "integrated" && measure != "end")
    return absl::InvalidArgumentError("--measure must be integrated or end");
  o.frontier.measure = measure == "end" ? research::SavingsMeasure::kAtCompletion
                                        : research::SavingsMeasure::kIntegrated;
  std::vector<research::PolicyRecord> records;
  if (args.Has("traces")) {
    int64_t nf = 0;
    KVG_ASSIGN_OR_RETURN(auto traces, research::LoadTraces(args.Get("traces"), &nf));
    KVG_ASSIGN_OR_RETURN(const nlohmann::json manifest, research::ReadManifest(args.Get("traces")));
    const auto names = manifest.value("feature_names", std::vector<std::string>{});
    // Which prompts: the held-out test prompts of the predictor's split (default), val, or all.
    const std::string which = args.Get("prompts", "test");
    std::set<std::string> prompts;
    if (which != "all") {
      if (which != "test" && which != "val")
        return absl::InvalidArgumentError("--prompts must be test, val or all");
      const auto want = which == "test" ? research::PromptSet::kTest : research::PromptSet::kVal;
      for (const auto& [id, set] : research::SplitPrompts(traces, static_cast<uint64_t>(seed))) {
        if (set == want) prompts.insert(id);
      }
    }
    KVG_ASSIGN_OR_RETURN(auto from_traces, research::StaticRecords(traces, names, prompts));
    records.insert(records.end(), from_traces.begin(), from_traces.end());
  }
  for (const std::string& path : args.GetAll("records")) {
    KVG_ASSIGN_OR_RETURN(auto more, research::ReadRecords(path));
    if (args.Has("traces")) {
      // The sweep supplies the static arms; keep only the guard arms of live records.
      std::erase_if(more, [](const research::PolicyRecord& r) {
        return r.arm.starts_with("static@") || r.arm == "none";
      });
    }
    records.insert(records.end(), more.begin(), more.end());
  }
  if (records.empty()) return absl::InvalidArgumentError("no records");
  std::filesystem::create_directories(out);
  KVG_RETURN_IF_ERROR(research::WriteRecords(out + "/records.jsonl", records));
  KVG_ASSIGN_OR_RETURN(std::string md, research::WriteFrontierReport(records, o));
  std::cout << md << "\nwritten to " << out
            << "/frontier.{md,json,csv}, frontier_*.svg, records.jsonl\n";
  return absl::OkStatus();
}

}  // namespace kvguard::cli
