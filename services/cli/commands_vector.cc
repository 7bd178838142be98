// `kvguard calibrate-vector`: fits VECTOR's value regression (see
// compressors/vector_calibration.h) for one model. It prefills calibration
// sequences, reads each layer's post-RoPE keys and values from the cache and
// solves, per layer and kv head, the ridge regression V ~= [K, 1] W in
// float64. Calibration text: for a model with a tokenizer, training-split
// word problems (prompt + solution, research/problems.h); without one,
// seeded random token ids after BOS. Every fifth sequence is also held out of
// a second fit, so the summary shows how well the regression generalises,
// not only how well it fits.
#include <ATen/ATen.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "compressors/vector_calibration.h"
#include "research/problems.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"
#include "services/cli/progress.h"
#include "services/engine/checkpoint.h"
#include "services/engine/llama_model.h"
#include "services/engine/tokenizer.h"

namespace kvguard::cli {
namespace {

using compress::RegressionAccumulator;
using Sequences = std::vector<std::vector<int32_t>>;

struct Options {
  std::string model, out;
  int64_t prompts = 16;
  int64_t tokens = 0;  // random-sequence length; cap on problem length (0 = context)
  double ridge = 1.0;
  int64_t seed = 0;
};

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv, {"model", "out", "prompts", "tokens", "ridge", "seed"}, {}));
  Options o;
  KVG_ASSIGN_OR_RETURN(o.model, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(o.out, args.Require("out"));
  KVG_ASSIGN_OR_RETURN(o.prompts, args.GetInt("prompts", 16));
  KVG_ASSIGN_OR_RETURN(o.tokens, args.GetInt("tokens", 0));
  KVG_ASSIGN_OR_RETURN(o.ridge, args.GetDouble("ridge", 1.0));
  KVG_ASSIGN_OR_RETURN(o.seed, args.GetInt("seed", 0));
  if (o.prompts < 1) return absl::InvalidArgumentError("--prompts must be >= 1");
  if (o.tokens < 0) return absl::InvalidArgumentError("--tokens must be >= 0");
  if (!(o.ridge >= 0)) return absl::InvalidArgumentError("--ridge must be >= 0");
  return o;
}

absl::StatusOr<Sequences> ProblemSequences(const engine::Tokenizer& tokenizer, const Options& o,
                                           int64_t max_len) {
  research::ProblemOptions po;
  po.seed = static_cast<uint64_t>(o.seed);
  KVG_ASSIGN_OR_RETURN(auto problems, research::GenerateProblems(po, research::Split::kTrain, 0, o.prompts));
  Sequences out;
  for (const research::Problem& p : problems) {
    KVG_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(p.prompt + p.solution));
    if (static_cast<int64_t>(ids.size()) > max_len) ids.resize(max_len);
    out.push_back(std::move(ids));
  }
  return out;
}

Sequences RandomSequences(const engine::ModelConfig& config, const Options& o, int64_t len) {
  std::mt19937_64 rng(static_cast<uint64_t>(o.seed));
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(config.vocab_size - 1));
  Sequences out(o.prompts);
  for (auto& seq : out) {
    if (config.bos_token_id >= 0) seq.push_back(config.bos_token_id);
    while (static_cast<int64_t>(seq.size()) < len) seq.push_back(id(rng));
  }
  return out;
}

// Per layer: the fit on the non-held-out sequences, and the held-out ones.
struct LayerStats {
  std::vector<RegressionAccumulator> fit, held;
};

absl::StatusOr<LayerStats> Collect(engine::LlamaModel& model, const Sequences& sequences) {
  const engine::ModelConfig& c = model.config();
  LayerStats stats;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    stats.fit.emplace_back(c.num_kv_heads, c.head_dim);
    stats.held.emplace_back(c.num_kv_heads, c.head_dim);
  }
  Progress progress("calibrate-vector");
  for (size_t i = 0; i < sequences.size(); ++i) {
    engine::SequenceKvCache cache(model.CacheOptions(static_cast<int64_t>(sequences[i].size())));
    engine::ForwardItem item{.cache = &cache, .tokens = sequences[i]};
    KVG_RETURN_IF_ERROR(model.Forward({&item, 1}).status());
    auto& part = (i % 5 == 4) ? stats.held : stats.fit;
    for (int64_t l = 0; l < c.num_layers; ++l) part[l].Add(cache.Keys(l), cache.Values(l));
    progress.Update(static_cast<int64_t>(i + 1), static_cast<int64_t>(sequences.size()));
  }
  return stats;
}

std::string JoinR2(const std::vector<double>& r2) {
  return absl::StrJoin(r2, ",", [](std::string* out, double v) { absl::StrAppendFormat(out, "%.4f", v); });
}

struct Fit {
  at::Tensor regression;         // [layers, kv_heads, d + 1, d]
  std::vector<double> r2;        // per layer, mean over heads, on all sequences
  std::vector<double> r2_held;   // per layer, fit without the held-out fifth; empty if none
  int64_t tokens = 0;
};

absl::StatusOr<Fit> Solve(LayerStats& stats, double ridge) {
  Fit fit;
  std::vector<at::Tensor> weights;
  for (size_t l = 0; l < stats.fit.size(); ++l) {
    if (stats.held[l].count() > 0) {
      KVG_ASSIGN_OR_RETURN(at::Tensor w_fit, stats.fit[l].Solve(ridge));
      fit.r2_held.push_back(stats.held[l].RSquared(w_fit).mean().item<double>());
    }
    stats.fit[l].Merge(stats.held[l]);
    KVG_ASSIGN_OR_RETURN(at::Tensor w, stats.fit[l].Solve(ridge));
    fit.r2.push_back(stats.fit[l].RSquared(w).mean().item<double>());
    weights.push_back(w);
  }
  fit.regression = at::stack(weights);
  fit.tokens = stats.fit[0].count();
  return fit;
}

void PrintSummary(const Options& o, const std::string& source, const Fit& fit) {
  std::cout << absl::StrFormat("VECTOR regression for %s: %d sequences (%s), %d tokens, ridge %g\n", o.model,
                               o.prompts, source, fit.tokens, o.ridge)
            << "layer  R^2 (in-sample)  R^2 (held-out 1/5)\n";
  for (size_t l = 0; l < fit.r2.size(); ++l) {
    const std::string held = fit.r2_held.empty() ? "n/a" : absl::StrFormat("%.4f", fit.r2_held[l]);
    std::cout << absl::StrFormat("%5d  %15.4f  %18s\n", l, fit.r2[l], held);
  }
  std::cout << "written to " << o.out << "\n";
}

}  // namespace

absl::Status RunCalibrateVector(int argc, char** argv) {
  KVG_ASSIGN_OR_RETURN(Options o, ParseOptions(argc, argv));
  KVG_ASSIGN_OR_RETURN(engine::Checkpoint ckpt, engine::OpenCheckpoint(o.model));
  std::unique_ptr<engine::Tokenizer> tokenizer;
  if (!ckpt.tokenizer_path.empty()) {
    KVG_ASSIGN_OR_RETURN(tokenizer, engine::Tokenizer::Load(ckpt.tokenizer_path));
  }
  KVG_ASSIGN_OR_RETURN(auto model, engine::LlamaModel::Load(std::move(ckpt), {}));
  const int64_t context = model->config().max_position_embeddings;
  Sequences sequences;
  if (tokenizer != nullptr) {
    const int64_t cap = o.tokens > 0 ? std::min(o.tokens, context) : context;
    KVG_ASSIGN_OR_RETURN(sequences, ProblemSequences(*tokenizer, o, cap));
  } else {
    sequences = RandomSequences(model->config(), o, std::min<int64_t>(o.tokens > 0 ? o.tokens : 128, context));
  }
  KVG_ASSIGN_OR_RETURN(LayerStats stats, Collect(*model, sequences));
  KVG_ASSIGN_OR_RETURN(Fit fit, Solve(stats, o.ridge));
  const std::string source = tokenizer != nullptr ? "problems:train" : "random";
  KVG_RETURN_IF_ERROR(compress::WriteVectorCalibration(o.out, fit.regression,
                                                       {{"model", o.model},
                                                        {"prompts", absl::StrCat(o.prompts)},
                                                        {"ridge", absl::StrCat(o.ridge)},
                                                        {"r2", JoinR2(fit.r2)},
                                                        {"r2_heldout", JoinR2(fit.r2_held)},
                                                        {"tokens", absl::StrCat(fit.tokens)},
                                                        {"seed", absl::StrCat(o.seed)},
                                                        {"source", source}}));
  PrintSummary(o, source, fit);
  return absl::OkStatus();
}

}  // namespace kvguard::cli
