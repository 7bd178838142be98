// The engine subcommands: tokenize, logits, generate, bench.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressors/plugin_loader.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"
#include "services/engine/benchmark.h"
#include "services/engine/engine.h"
#include "services/engine/tokenizer.h"

namespace kvguard::cli {
namespace {

using engine::Engine;
using engine::EngineOptions;
using nlohmann::json;

std::string Dump(const json& j) {
  // Replace invalid UTF-8 rather than throw: a model may emit partial bytes.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<EngineOptions> EngineOptionsFrom(const CliArgs& args) {
  EngineOptions options;
  options.device = args.Get("device", "cpu");
  options.dtype = args.Get("dtype", "auto");
  options.weights = args.Get("weights", "native");
  KVG_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  options.num_threads = static_cast<int>(threads);
  return options;
}

absl::StatusOr<compress::CompressionSpec> CompressionFrom(const CliArgs& args) {
  compress::CompressionSpec spec;
  spec.compressor = args.Get("compressor");
  spec.options = args.GetAll("compressor-opt");
  KVG_ASSIGN_OR_RETURN(spec.ratio, args.GetDouble("ratio", 0.0));
  KVG_ASSIGN_OR_RETURN(spec.compress_every, args.GetInt("compress-every", 0));
  if (spec.compressor.empty() && (args.Has("ratio") || args.Has("compressor-opt"))) {
    return absl::InvalidArgumentError("--ratio and --compressor-opt need --compressor");
  }
  return spec;
}

absl::StatusOr<engine::GenerateRequest> RequestFrom(const CliArgs& args, const Engine& eng) {
  engine::GenerateRequest req;
  if (args.Has("ids") == args.Has("prompt")) {
    return absl::InvalidArgumentError("give exactly one of --prompt or --ids");
  }
  if (args.Has("ids")) {
    KVG_ASSIGN_OR_RETURN(req.prompt_ids, ParseIdList(args.Get("ids")));
  } else {
    if (eng.tokenizer() == nullptr) {
      return absl::InvalidArgumentError(
          "this model has no tokenizer.json: use --ids instead of --prompt");
    }
    KVG_ASSIGN_OR_RETURN(req.prompt_ids, eng.tokenizer()->Encode(args.Get("prompt")));
  }
  KVG_ASSIGN_OR_RETURN(int64_t max_new, args.GetInt("max-new-tokens", 64));
  if (max_new < 1 || max_new > (1 << 24)) {
    return absl::InvalidArgumentError("--max-new-tokens must be in [1, 16777216]");
  }
  req.max_new_tokens = static_cast<int32_t>(max_new);
  KVG_ASSIGN_OR_RETURN(req.sampling.temperature, args.GetDouble("temperature", 0.0));
  KVG_ASSIGN_OR_RETURN(int64_t top_k, args.GetInt("top-k", 0));
  req.sampling.top_k = static_cast<int32_t>(std::clamp<int64_t>(top_k, -1, 1 << 30));
  KVG_ASSIGN_OR_RETURN(req.sampling.top_p, args.GetDouble("top-p", 1.0));
  KVG_ASSIGN_OR_RETURN(req.sampling.repetition_penalty, args.GetDouble("repetition-penalty", 1.0));
  KVG_ASSIGN_OR_RETURN(int64_t no_repeat, args.GetInt("no-repeat-ngram", 0));
  req.sampling.no_repeat_ngram = static_cast<int32_t>(std::clamp<int64_t>(no_repeat, -1, 1 << 20));
  KVG_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  req.sampling.seed = static_cast<uint64_t>(seed);
  KVG_ASSIGN_OR_RETURN(int64_t logprobs, args.GetInt("logprobs", 0));
  req.sampling.logprobs = static_cast<int32_t>(std::clamp<int64_t>(logprobs, -1, 1000));
  req.stop_strings = args.GetAll("stop");
  for (const std::string& s : args.GetAll("stop-id")) {
    KVG_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(s));
    req.stop_token_ids.insert(req.stop_token_ids.end(), ids.begin(), ids.end());
  }
  req.ignore_eos = args.Has("ignore-eos");
  KVG_ASSIGN_OR_RETURN(req.compression, CompressionFrom(args));
  return req;
}

json ResultJson(const engine::GenerateResult& r, bool with_logprobs) {
  json out = {{"prompt_ids", r.prompt_ids},
              {"output_ids", r.output_ids},
              {"text", r.text},
              {"finish_reason", engine::FinishReasonName(r.finish_reason)},
              {"kv_bytes", r.kv_bytes},
              {"retained_tokens", r.retained_tokens}};
  if (with_logprobs) {
    json lps = json::array();
    for (const auto& t : r.tokens) {
      json top = json::array();
      for (const auto& lp : t.top_logprobs) top.push_back({{"id", lp.id}, {"logprob", lp.logprob}});
      lps.push_back({{"id", t.id}, {"logprob", t.logprob}, {"top", top}});
    }
    out["logprobs"] = lps;
  }
  return out;
}

}  // namespace

absl::Status RunTokenize(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv, {"tokenizer", "text", "ids"}, {}));
  KVG_ASSIGN_OR_RETURN(std::string path, args.Require("tokenizer"));
  if (args.Has("text") == args.Has("ids")) {
    return absl::InvalidArgumentError("give exactly one of --text or --ids");
  }
  KVG_ASSIGN_OR_RETURN(auto tokenizer, engine::Tokenizer::Load(path));
  if (args.Has("text")) {
    KVG_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(args.Get("text")));
    std::cout << Dump(json{{"ids", ids}}) << "\n";
    return absl::OkStatus();
  }
  KVG_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(args.Get("ids")));
  for (int32_t id : ids) {
    if (id < 0 || id >= tokenizer->vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the vocabulary [0, ", tokenizer->vocab_size(), ")"));
    }
  }
  std::cout << Dump(json{{"text", tokenizer->Decode(ids)}}) << "\n";
  return absl::OkStatus();
}

absl::Status RunLogits(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(
      args.Parse(argc, argv, {"model", "ids", "device", "dtype", "weights", "threads"}, {}));
  KVG_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(std::string ids_text, args.Require("ids"));
  KVG_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(ids_text));
  KVG_ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFrom(args));
  KVG_ASSIGN_OR_RETURN(auto eng, Engine::Load(model, options));
  KVG_ASSIGN_OR_RETURN(auto rows, eng->Logits(ids));
  // Hand-formatted: 9 significant digits round-trip a float32 exactly.
  std::string out = "{\"logits\":[";
  char buf[32];
  for (size_t r = 0; r < rows.size(); ++r) {
    out += r ? ",[" : "[";
    for (size_t i = 0; i < rows[r].size(); ++i) {
      std::snprintf(buf, sizeof(buf), i ? ",%.9g" : "%.9g", static_cast<double>(rows[r][i]));
      out += buf;
    }
    out += "]";
  }
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return absl::OkStatus();
}

absl::Status RunGenerate(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv,
                                 {"model",          "prompt",         "ids",
                                  "max-new-tokens", "temperature",    "top-k",
                                  "top-p",          "seed",           "repetition-penalty",
                                  "stop",           "stop-id",        "logprobs",
                                  "device",         "dtype",          "weights",
                                  "threads",        "compressor",     "ratio",
                                  "compressor-opt", "compress-every", "plugin",
                                  "no-repeat-ngram"},
                                 {"ignore-eos", "json"}));
  for (const std::string& path : args.GetAll("plugin")) {
    KVG_RETURN_IF_ERROR(compress::LoadCompressorPlugin(path, compress::Registry::Global()));
  }
  KVG_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFrom(args));
  KVG_ASSIGN_OR_RETURN(auto eng, Engine::Load(model, options));
  KVG_ASSIGN_OR_RETURN(engine::GenerateRequest req, RequestFrom(args, *eng));
  KVG_ASSIGN_OR_RETURN(engine::GenerateResult result, eng->Generate(req));
  if (args.Has("json")) {
    std::cout << Dump(ResultJson(result, req.sampling.logprobs > 0)) << "\n";
    return absl::OkStatus();
  }
  if (eng->tokenizer() != nullptr) {
    std::cout << result.text << "\n";
  } else {
    std::cout << Dump(json(result.output_ids)) << "\n";
  }
  const double tps =
      result.decode_seconds > 0 ? (result.output_ids.size() - 1) / result.decode_seconds : 0;
  std::cerr << "[" << result.output_ids.size()
            << " tokens, finish=" << engine::FinishReasonName(result.finish_reason) << ", prefill "
            << result.prefill_seconds * 1000 << " ms, decode " << tps << " tok/s]\n";
  return absl::OkStatus();
}

absl::Status RunKept(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv,
                                 {"model", "ids", "compressor", "ratio", "compressor-opt", "device",
                                  "dtype", "threads", "plugin"},
                                 {"scores"}));
  for (const std::string& path : args.GetAll("plugin")) {
    KVG_RETURN_IF_ERROR(compress::LoadCompressorPlugin(path, compress::Registry::Global()));
  }
  KVG_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(std::string ids_text, args.Require("ids"));
  KVG_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(ids_text));
  KVG_RETURN_IF_ERROR(args.Require("compressor").status());
  KVG_ASSIGN_OR_RETURN(compress::CompressionSpec spec, CompressionFrom(args));
  KVG_ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFrom(args));
  KVG_ASSIGN_OR_RETURN(auto eng, Engine::Load(model, options));
  KVG_ASSIGN_OR_RETURN(auto kept, eng->Kept(ids, spec));
  json out = {{"kept", kept}};
  if (args.Has("scores")) {
    KVG_ASSIGN_OR_RETURN(auto scores, eng->Scores(ids, spec));
    out["scores"] = scores;
  }
  std::cout << Dump(out) << "\n";
  return absl::OkStatus();
}

absl::Status RunBench(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv,
                                 {"model", "device", "dtype", "weights", "threads", "batch",
                                  "prompt-tokens", "decode-tokens", "warmup", "cpu-decode"},
                                 {"json"}));
  KVG_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  KVG_ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFrom(args));
  engine::BenchmarkOptions bench;
  KVG_ASSIGN_OR_RETURN(bench.batch, args.GetInt("batch", 1));
  KVG_ASSIGN_OR_RETURN(bench.prompt_tokens, args.GetInt("prompt-tokens", 32));
  KVG_ASSIGN_OR_RETURN(bench.decode_tokens, args.GetInt("decode-tokens", 256));
  KVG_ASSIGN_OR_RETURN(bench.warmup_steps, args.GetInt("warmup", 8));
  const std::string cpu_decode = args.Get("cpu-decode", "loops");
  if (cpu_decode != "loops" && cpu_decode != "libtorch") {
    return absl::InvalidArgumentError("--cpu-decode must be loops or libtorch");
  }
  bench.fused_cpu_decode = cpu_decode == "loops";
  KVG_ASSIGN_OR_RETURN(engine::BenchmarkResult r, engine::RunBenchmark(model, options, bench));
  json out = {{"model", model},
              {"device", options.device},
              {"dtype", r.dtype},
              {"threads", options.num_threads},
              {"blas", r.blas},
              {"matmul", r.matmul},
              {"weights", r.weights},
              {"decode_path", r.decode_path},
              {"logit_rel_rms_error", r.logit_rel_rms_error},
              {"top1_agreement", r.top1_agreement},
              {"batch", bench.batch},
              {"prompt_tokens", bench.prompt_tokens},
              {"decode_tokens", bench.decode_tokens},
              {"prefill_tokens_per_s", r.prefill_tokens_per_s},
              {"decode_tokens_per_s", r.decode_tokens_per_s},
              {"decode_ms_per_step", r.decode_ms_per_step}};
  std::cout << (args.Has("json") ? out.dump() : out.dump(2)) << "\n";
  return absl::OkStatus();
}

}  // namespace kvguard::cli
