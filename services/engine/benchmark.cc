#include "services/engine/benchmark.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/status_macros.h"
#include "services/engine/cpu_matvec.h"
#include "services/engine/llama_model.h"

namespace kvguard::engine {
namespace {

using Clock = std::chrono::steady_clock;

void Synchronize(const LlamaModel& model, const at::Tensor& t) {
  // A host copy waits for the device; cheap for a handful of ids.
  if (model.device().is_cuda()) (void)t.to(at::kCPU);
}

// Runs the native and the quantized model side by side on one sequence: the
// native model's greedy choices are fed to both, and their logits compared.
absl::Status CompareToNativeWeights(const std::string& model_path, const EngineOptions& eo,
                                    const BenchmarkOptions& options, BenchmarkResult& result) {
  std::vector<std::unique_ptr<LlamaModel>> models;
  for (const std::string& weights : {std::string("native"), eo.weights}) {
    KVG_ASSIGN_OR_RETURN(Checkpoint ckpt, OpenCheckpoint(model_path));
    KVG_ASSIGN_OR_RETURN(
        auto m, LlamaModel::Load(std::move(ckpt),
                                 {.device = eo.device, .dtype = eo.dtype, .weights = weights}));
    models.push_back(std::move(m));
  }
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(
      0, static_cast<int32_t>(models[0]->config().vocab_size - 1));
  const int64_t total = options.prompt_tokens + options.warmup_steps + options.decode_tokens;
  std::vector<int32_t> tokens;
  for (int64_t i = 0; i < options.prompt_tokens; ++i) tokens.push_back(pick(rng));
  SequenceKvCache native_cache(models[0]->CacheOptions(total));
  SequenceKvCache quant_cache(models[1]->CacheOptions(total));
  double error_sum = 0;
  int64_t agree = 0, steps = 0;
  for (int64_t s = 0; s <= options.warmup_steps + options.decode_tokens; ++s) {
    ForwardItem a{.cache = &native_cache, .tokens = tokens};
    ForwardItem b{.cache = &quant_cache, .tokens = tokens};
    KVG_ASSIGN_OR_RETURN(at::Tensor want, models[0]->Forward({&a, 1}));
    KVG_ASSIGN_OR_RETURN(at::Tensor got, models[1]->Forward({&b, 1}));
    want = want.to(at::kCPU).to(at::kDouble);
    got = got.to(at::kCPU).to(at::kDouble);
    error_sum += (got - want).norm().item<double>() / want.norm().item<double>();
    const int64_t choice = want.argmax(-1).item<int64_t>();
    agree += got.argmax(-1).item<int64_t>() == choice;
    ++steps;
    tokens = {static_cast<int32_t>(choice)};
  }
  result.logit_rel_rms_error = error_sum / static_cast<double>(steps);
  result.top1_agreement = static_cast<double>(agree) / static_cast<double>(steps);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BenchmarkResult> RunBenchmark(const std::string& model_path,
                                             const EngineOptions& engine_options,
                                             const BenchmarkOptions& options) {
  if (options.batch < 1 || options.prompt_tokens < 1 || options.decode_tokens < 1) {
    return absl::InvalidArgumentError("batch, prompt tokens and decode tokens must be >= 1");
  }
  if (engine_options.num_threads > 0) {
    at::set_num_threads(engine_options.num_threads);
    SetBlasThreads(engine_options.num_threads);
  }
  KVG_ASSIGN_OR_RETURN(Checkpoint ckpt, OpenCheckpoint(model_path));
  const int64_t total = options.prompt_tokens + options.decode_tokens + options.warmup_steps;
  if (total > ckpt.config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + decode + warmup = ", total,
                                                   " exceeds the model context of ",
                                                   ckpt.config.max_position_embeddings));
  }
  const int64_t vocab = ckpt.config.vocab_size;
  BenchmarkResult result;
  KVG_ASSIGN_OR_RETURN(
      auto model,
      LlamaModel::Load(std::move(ckpt), {.device = engine_options.device,
                                         .dtype = engine_options.dtype,
                                         .weights = engine_options.weights,
                                         .fused_cpu_decode = options.fused_cpu_decode}));
  result.dtype = DtypeName(model->dtype());
  const BlasInfo blas = DescribeBlas();
  result.blas = blas.path.empty() ? blas.name : absl::StrCat(blas.name, " (", blas.path, ")");
  // libtorch's CPU linear: f32 calls the BLAS's sgemm; bf16/f16 go to oneDNN when built with it.
  if (model->device().is_cuda()) {
    result.matmul = "CUDA (cuBLAS)";
  } else {
    const std::string gemm = model->weights() == "int8" ? "int8 dequantized to " : "";
    result.matmul = absl::StrCat(
        "decode (<= ", cpu::kMaxMatVecRows, " rows): kvguard MatVec (", cpu::MatVecIsa(), ", ",
        model->weights() == "int8" ? "int8" : DtypeName(model->dtype()),
        " weights); prefill: ", gemm,
        model->dtype() == at::kFloat ? absl::StrCat("BLAS sgemm (", blas.name, ")")
                                     : (at::hasMKLDNN() ? "oneDNN" : "ATen reference kernels"));
  }
  result.weights = model->weights();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  std::vector<std::unique_ptr<SequenceKvCache>> caches;
  std::vector<ForwardItem> items(options.batch);
  for (int64_t b = 0; b < options.batch; ++b) {
    caches.push_back(std::make_unique<SequenceKvCache>(model->CacheOptions(total)));
    items[b].cache = caches.back().get();
    for (int64_t i = 0; i < options.prompt_tokens; ++i) items[b].tokens.push_back(pick(rng));
  }
  auto start = Clock::now();
  KVG_ASSIGN_OR_RETURN(at::Tensor logits, model->Forward(items));
  Synchronize(*model, logits);
  const double prefill_s = std::chrono::duration<double>(Clock::now() - start).count();
  result.prefill_tokens_per_s =
      static_cast<double>(options.batch * options.prompt_tokens) / prefill_s;
  auto step = [&]() -> absl::Status {
    at::Tensor next = logits.argmax(-1).to(at::kCPU);
    const int64_t* ids = next.data_ptr<int64_t>();
    for (int64_t b = 0; b < options.batch; ++b) items[b].tokens = {static_cast<int32_t>(ids[b])};
    result.decode_path = model->DecodesOnCpu(items) ? "cpu loops" : "libtorch ops";
    KVG_ASSIGN_OR_RETURN(logits, model->Forward(items));
    return absl::OkStatus();
  };
  for (int64_t i = 0; i < options.warmup_steps; ++i) KVG_RETURN_IF_ERROR(step());
  Synchronize(*model, logits);
  start = Clock::now();
  for (int64_t i = 0; i < options.decode_tokens; ++i) KVG_RETURN_IF_ERROR(step());
  Synchronize(*model, logits);
  const double decode_s = std::chrono::duration<double>(Clock::now() - start).count();
  result.steps = options.decode_tokens;
  result.decode_ms_per_step = 1000.0 * decode_s / static_cast<double>(options.decode_tokens);
  result.decode_tokens_per_s =
      static_cast<double>(options.batch * options.decode_tokens) / decode_s;
  if (model->weights() != "native") {
    model.reset();  // one model in memory at a time
    KVG_RETURN_IF_ERROR(CompareToNativeWeights(model_path, engine_options, options, result));
  }
  return result;
}

absl::StatusOr<std::vector<CompressorBenchmarkRow>> RunCompressorBenchmark(
    Engine& engine, const CompressorBenchmarkOptions& options,
    const std::function<void(int, int)>& on_progress) {
  const ModelConfig& c = engine.config();
  if (options.prompt_tokens + options.decode_tokens > c.max_position_embeddings) {
    return absl::InvalidArgumentError("prompt + decode tokens exceed the model context");
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> pick(3, static_cast<int32_t>(c.vocab_size - 1));
  GenerateRequest base;
  for (int64_t i = 0; i < options.prompt_tokens; ++i) base.prompt_ids.push_back(pick(rng));
  base.max_new_tokens = static_cast<int32_t>(options.decode_tokens);
  base.ignore_eos = true;
  auto measure = [&](const GenerateRequest& req) -> absl::StatusOr<std::pair<double, int64_t>> {
    double best = 1e30;
    int64_t bytes = 0;
    for (int r = 0; r < std::max(1, options.repeats); ++r) {
      if (options.batch <= 1) {
        KVG_ASSIGN_OR_RETURN(GenerateResult out, engine.Generate(req));
        best = std::min(
            best, 1000.0 * out.decode_seconds / std::max<size_t>(1, out.output_ids.size() - 1));
        bytes = out.kv_bytes;
        continue;
      }
      // ms per batched step; KV bytes of one sequence.
      KVG_ASSIGN_OR_RETURN(auto out,
                           engine.GenerateBatch(std::vector<GenerateRequest>(options.batch, req)));
      best = std::min(best,
                      1000.0 * out.decode_seconds / double(std::max<int64_t>(1, out.decode_steps)));
      bytes = out.results[0].kv_bytes;
    }
    return std::make_pair(best, bytes);
  };
  const int total = 1 + static_cast<int>(options.compressors.size() * options.ratios.size());
  KVG_ASSIGN_OR_RETURN(auto plain, measure(base));
  if (on_progress) on_progress(1, total);
  std::vector<CompressorBenchmarkRow> rows = {
      {.compressor = "none", .ratio = 0, .kv_bytes = plain.second, .ms_per_step = plain.first}};
  int done = 1;
  for (const std::string& name : options.compressors) {
    for (double ratio : options.ratios) {
      GenerateRequest req = base;
      req.compression = {
          .compressor = name, .ratio = ratio, .compress_every = options.compress_every};
      if (name == "snapkv" || name == "pyramidkv") req.compression.options = {"window_size=16"};
      if (name == "q2c") {
        req.compression.options = {absl::StrCat("question_begin=", options.prompt_tokens - 16),
                                   absl::StrCat("question_end=", options.prompt_tokens)};
      }
      KVG_ASSIGN_OR_RETURN(auto m, measure(req));
      rows.push_back({.compressor = name,
                      .ratio = ratio,
                      .kv_bytes = m.second,
                      .kv_fraction = double(m.second) / double(plain.second),
                      .ms_per_step = m.first,
                      .relative_step_time = m.first / plain.first});
      if (on_progress) on_progress(++done, total);
    }
  }
  return rows;
}

}  // namespace kvguard::engine
