// The model-making subcommands: train-lm (train the project's small
// arithmetic model and write an HF checkpoint dir) and eval-lm (its held-out
// greedy accuracy through the real engine).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "research/problems.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"
#include "services/trainer/lm_trainer.h"

namespace kvguard::cli {
namespace {

using nlohmann::json;

// The task the default model is trained on: short enough for a ~1M-parameter
// model on one CPU thread, with filler sentences so prompts have context worth
// evicting in the research loop.
research::ProblemOptions DefaultProblems() {
  research::ProblemOptions o;
  o.min_steps = 2;
  o.max_steps = 3;
  o.max_operand = 20;
  o.max_multiplier = 3;
  o.max_value = 200;
  o.num_distractors = 1;
  o.num_padding = 2;
  return o;
}

absl::StatusOr<int64_t> PositiveInt(const CliArgs& args, const std::string& name,
                                    int64_t fallback) {
  KVG_ASSIGN_OR_RETURN(int64_t v, args.GetInt(name, fallback));
  if (v < 1) return absl::InvalidArgumentError(absl::StrCat("--", name, " must be >= 1"));
  return v;
}

absl::StatusOr<trainer::LmShape> ShapeFrom(const CliArgs& args) {
  trainer::LmShape s;
  KVG_ASSIGN_OR_RETURN(s.dim, PositiveInt(args, "dim", s.dim));
  KVG_ASSIGN_OR_RETURN(s.layers, PositiveInt(args, "layers", s.layers));
  KVG_ASSIGN_OR_RETURN(s.heads, PositiveInt(args, "heads", s.heads));
  KVG_ASSIGN_OR_RETURN(s.kv_heads, PositiveInt(args, "kv-heads", s.kv_heads));
  KVG_ASSIGN_OR_RETURN(s.ffn, PositiveInt(args, "ffn", s.ffn));
  KVG_ASSIGN_OR_RETURN(s.max_positions, PositiveInt(args, "max-positions", s.max_positions));
  KVG_RETURN_IF_ERROR(trainer::ValidateShape(s));
  return s;
}

absl::StatusOr<trainer::TrainOptions> TrainOptionsFrom(const CliArgs& args) {
  trainer::TrainOptions o;
  KVG_ASSIGN_OR_RETURN(o.steps, PositiveInt(args, "steps", o.steps));
  KVG_ASSIGN_OR_RETURN(o.batch, PositiveInt(args, "batch", o.batch));
  KVG_ASSIGN_OR_RETURN(o.warmup_steps,
                       PositiveInt(args, "warmup", std::min<int64_t>(100, o.steps)));
  KVG_ASSIGN_OR_RETURN(o.lr, args.GetDouble("lr", o.lr));
  KVG_ASSIGN_OR_RETURN(o.time_budget_s, args.GetDouble("time-budget", 0.0));
  KVG_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 1));
  o.seed = static_cast<uint64_t>(seed);
  KVG_ASSIGN_OR_RETURN(int64_t threads, PositiveInt(args, "threads", 1));
  o.threads = static_cast<int>(threads);
  KVG_ASSIGN_OR_RETURN(o.problems,
                       trainer::ApplyProblemOpts(DefaultProblems(), args.GetAll("problem-opt")));
  if (!(o.lr > 0)) return absl::InvalidArgumentError("--lr must be > 0");
  return o;
}

std::string CommandLine(int argc, char** argv) {
  std::string line = "kvguard train-lm";
  for (int i = 0; i < argc; ++i) absl::StrAppend(&line, " ", argv[i]);
  return line;
}

void PrintStep(const trainer::StepStats& s) {
  const double eta = s.elapsed_s / s.step * (s.total - s.step);
  std::fprintf(stderr, "\rtrain-lm: step %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %.0fs   ",
               static_cast<long long>(s.step), static_cast<long long>(s.total), s.loss, s.lr,
               s.tokens_per_s, eta);
  // Every 100 steps the line is kept, so the log shows the curve.
  if (s.step % 100 == 0 || s.step == s.total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

void PrintEvalProgress(int64_t done, int64_t total) {
  std::fprintf(stderr, "\reval: %lld/%lld   ", static_cast<long long>(done),
               static_cast<long long>(total));
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

json EvalJson(const trainer::EvalResult& ev) {
  return {{"split", "test"},         {"problems", ev.total},  {"correct", ev.correct},
          {"accuracy", ev.accuracy}, {"seconds", ev.seconds}, {"decoding", "greedy, uncompressed"}};
}

}  // namespace

absl::Status RunTrainLm(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(
      args.Parse(argc, argv,
                 {"out", "steps", "batch", "dim", "layers", "heads", "kv-heads", "ffn",
                  "max-positions", "lr", "warmup", "seed", "threads", "train-problems",
                  "eval-problems", "problem-opt", "time-budget", "init"},
                 {}));
  KVG_ASSIGN_OR_RETURN(std::string out, args.Require("out"));
  // --init DIR continues from an earlier checkpoint (its shape wins).
  KVG_ASSIGN_OR_RETURN(trainer::LmShape shape,
                       args.Has("init") ? trainer::ReadShape(args.Get("init")) : ShapeFrom(args));
  // RoPE has no learned positions, so a continued model may take a longer context.
  if (args.Has("init") && args.Has("max-positions")) {
    KVG_ASSIGN_OR_RETURN(shape.max_positions,
                         PositiveInt(args, "max-positions", shape.max_positions));
  }
  KVG_ASSIGN_OR_RETURN(trainer::TrainOptions options, TrainOptionsFrom(args));
  KVG_ASSIGN_OR_RETURN(int64_t eval_problems, args.GetInt("eval-problems", 200));
  if (args.Has("train-problems")) {
    // The stream is unbounded; --train-problems caps it by setting the steps.
    KVG_ASSIGN_OR_RETURN(int64_t n, PositiveInt(args, "train-problems", 1));
    options.steps = std::max<int64_t>(1, n / options.batch);
  }
  KVG_ASSIGN_OR_RETURN(auto model, trainer::LmModel::Create(shape, options.seed));
  if (args.Has("init")) KVG_RETURN_IF_ERROR(model->LoadWeights(args.Get("init")));
  std::fprintf(stderr, "train-lm: %lld parameters, %lld steps of %lld problems\n",
               static_cast<long long>(model->num_parameters()),
               static_cast<long long>(options.steps), static_cast<long long>(options.batch));
  KVG_ASSIGN_OR_RETURN(trainer::TrainReport report, trainer::TrainLm(*model, options, PrintStep));
  KVG_RETURN_IF_ERROR(model->Save(out));
  json record = {{"command", CommandLine(argc, argv)},
                 {"seed", options.seed},
                 {"init", args.Get("init")},
                 {"threads", options.threads},
                 {"parameters", model->num_parameters()},
                 {"model",
                  {{"dim", shape.dim},
                   {"layers", shape.layers},
                   {"heads", shape.heads},
                   {"kv_heads", shape.kv_heads},
                   {"ffn", shape.ffn},
                   {"max_positions", shape.max_positions}}},
                 {"optimizer",
                  {{"name", "AdamW"},
                   {"lr", options.lr},
                   {"betas", {0.9, 0.95}},
                   {"weight_decay", options.weight_decay},
                   {"warmup_steps", options.warmup_steps},
                   {"schedule", "linear warmup, cosine to lr*0.1"},
                   {"grad_clip", options.grad_clip}}},
                 {"steps", options.steps},
                 {"steps_done", static_cast<int64_t>(report.steps.size())},
                 {"time_budget_s", options.time_budget_s},
                 {"batch", options.batch},
                 {"problem_options", research::ToJson(options.problems)}};
  if (eval_problems > 0) {
    KVG_ASSIGN_OR_RETURN(trainer::EvalResult ev,
                         trainer::EvaluateGreedy(out, options.problems, eval_problems,
                                                 options.threads, PrintEvalProgress));
    record["eval"] = EvalJson(ev);
    std::cout << absl::StrFormat("held-out greedy accuracy: %d/%d = %.1f%%\n", ev.correct, ev.total,
                                 100.0 * ev.accuracy);
  }
  KVG_RETURN_IF_ERROR(trainer::WriteTrainingRecord(out, report, record));
  std::cout << absl::StrFormat("wrote %s (train %.0fs, final loss %.4f)\n", out, report.wall_s,
                               report.final_loss);
  return absl::OkStatus();
}

absl::Status RunEvalLm(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(
      argc, argv, {"model", "problems", "threads", "problem-opt", "weights"}, {"json", "show"}));
  KVG_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(int64_t count, PositiveInt(args, "problems", 200));
  KVG_ASSIGN_OR_RETURN(int64_t threads, PositiveInt(args, "threads", 1));
  // The problems the model was trained on, recorded by train-lm, unless overridden.
  research::ProblemOptions base = DefaultProblems();
  const std::string record_path = (std::filesystem::path(model) / "training.json").string();
  if (std::filesystem::exists(record_path)) {
    KVG_ASSIGN_OR_RETURN(std::string text, ReadFileToString(record_path));
    json record = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (record.is_object() && record.contains("problem_options")) {
      KVG_ASSIGN_OR_RETURN(base, research::OptionsFromJson(record["problem_options"]));
    }
  }
  KVG_ASSIGN_OR_RETURN(research::ProblemOptions problems,
                       trainer::ApplyProblemOpts(base, args.GetAll("problem-opt")));
  KVG_ASSIGN_OR_RETURN(trainer::EvalResult ev,
                       trainer::EvaluateGreedy(model, problems, count, static_cast<int>(threads),
                                               PrintEvalProgress, args.Get("weights", "native")));
  if (args.Has("show")) {
    for (const auto& s : ev.samples) {
      std::cout << s.id << (s.correct ? " OK " : " WRONG ") << "gold=" << s.gold << "\n"
                << s.output << "\n---\n";
    }
  }
  if (args.Has("json")) {
    json j = EvalJson(ev);
    j["model"] = model;
    j["problem_options"] = research::ToJson(problems);
    std::cout << j.dump() << "\n";
  } else {
    std::cout << absl::StrFormat("held-out greedy accuracy: %d/%d = %.1f%% (%.1fs)\n", ev.correct,
                                 ev.total, 100.0 * ev.accuracy, ev.seconds);
  }
  return absl::OkStatus();
}

}  // namespace kvguard::cli
