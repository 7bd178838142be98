#include "services/engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/status_macros.h"
#include "compressors/cache_compression.h"
#include "services/engine/checkpoint.h"
#include "services/engine/llama_model.h"
#include "services/engine/sequence.h"

namespace kvguard::engine {
namespace {

// Copies one row of float32 logits to host memory.
std::vector<float> HostRow(const at::Tensor& logits, int64_t row) {
  at::Tensor r = logits[row].to(at::kCPU).contiguous();
  const float* p = r.data_ptr<float>();
  return std::vector<float>(p, p + r.numel());
}

compress::RopeFn RopeOf(const LlamaModel& model) {
  return [&model](int64_t first, int64_t count) { return model.RopeCosSin(first, count); };
}

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

struct Engine::Impl {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Load(const std::string& model_path,
                                                     const EngineOptions& options) {
  if (options.num_threads > 0) {
    at::set_num_threads(options.num_threads);
    SetBlasThreads(options.num_threads);
  }
  KVG_ASSIGN_OR_RETURN(Checkpoint ckpt, OpenCheckpoint(model_path));
  auto impl = std::make_unique<Impl>();
  if (!ckpt.tokenizer_path.empty()) {
    KVG_ASSIGN_OR_RETURN(impl->tokenizer, Tokenizer::Load(ckpt.tokenizer_path));
  }
  KVG_ASSIGN_OR_RETURN(impl->model,
                       LlamaModel::Load(std::move(ckpt), {.device = options.device,
                                                          .dtype = options.dtype,
                                                          .weights = options.weights}));
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const ModelConfig& Engine::config() const { return impl_->model->config(); }
std::string Engine::dtype() const { return DtypeName(impl_->model->dtype()); }
const Tokenizer* Engine::tokenizer() const { return impl_->tokenizer.get(); }

absl::StatusOr<std::vector<std::vector<float>>> Engine::Logits(const std::vector<int32_t>& ids) {
  if (ids.empty()) return absl::InvalidArgumentError("ids must not be empty");
  SequenceKvCache cache(impl_->model->CacheOptions(static_cast<int64_t>(ids.size())));
  ForwardItem item{.cache = &cache, .tokens = ids, .all_logits = true};
  KVG_ASSIGN_OR_RETURN(at::Tensor logits, impl_->model->Forward({&item, 1}));
  std::vector<std::vector<float>> rows;
  for (int64_t r = 0; r < logits.size(0); ++r) rows.push_back(HostRow(logits, r));
  return rows;
}

absl::Status Engine::ValidateRequest(const GenerateRequest& request) const {
  const ModelConfig& c = config();
  if (request.prompt_ids.empty()) return absl::InvalidArgumentError("prompt is empty");
  for (int32_t id : request.prompt_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  if (static_cast<int64_t>(request.prompt_ids.size()) >= c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", request.prompt_ids.size(),
                                                   " tokens does not fit the context of ",
                                                   c.max_position_embeddings));
  }
  if (request.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens must be >= 1");
  if (!request.stop_strings.empty() && tokenizer() == nullptr) {
    return absl::InvalidArgumentError("stop strings need a model with a tokenizer");
  }
  for (const std::string& s : request.stop_strings) {
    if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  if (!request.compression.compressor.empty()) {
    KVG_RETURN_IF_ERROR(compress::ValidateRatio(request.compression.ratio));
    for (const auto& [step, ratio] : request.compression.ratio_schedule) {
      KVG_RETURN_IF_ERROR(compress::ValidateRatio(ratio));
    }
  }
  return ValidateSamplingParams(request.sampling);
}

absl::StatusOr<Engine::BatchGeneration> Engine::GenerateBatch(
    const std::vector<GenerateRequest>& requests) {
  LlamaModel& model = *impl_->model;
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (const GenerateRequest& r : requests) {
    KVG_RETURN_IF_ERROR(ValidateRequest(r));
    KVG_ASSIGN_OR_RETURN(seqs.emplace_back(),
                         Sequence::Create(model, impl_->tokenizer.get(), r, {}));
  }
  BatchGeneration out;
  for (bool prefill = true;; prefill = false) {
    std::vector<ForwardItem> items;
    std::vector<Sequence*> live;
    for (auto& s : seqs) {
      if (ForwardItem* item = s->NextForward()) {
        items.push_back(*item);
        live.push_back(s.get());
      }
    }
    if (items.empty()) break;
    const auto t0 = std::chrono::steady_clock::now();
    KVG_ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(items));
    at::Tensor host = logits.to(at::kCPU).contiguous();
    for (auto& step : AfterForwardAll(live, host.data_ptr<float>(), host.size(1)))
      KVG_RETURN_IF_ERROR(step.status());
    if (prefill) continue;
    out.decode_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++out.decode_steps;
  }
  for (auto& s : seqs) out.results.push_back(s->Result());
  return out;
}

absl::StatusOr<GenerateResult> Engine::Generate(
    const GenerateRequest& request, const std::function<void(const SampledToken&)>& on_token) {
  KVG_RETURN_IF_ERROR(ValidateRequest(request));
  LlamaModel& model = *impl_->model;
  KVG_ASSIGN_OR_RETURN(auto seq, Sequence::Create(model, impl_->tokenizer.get(), request, {}));
  while (ForwardItem* item = seq->NextForward()) {
    KVG_ASSIGN_OR_RETURN(at::Tensor logits, model.Forward({item, 1}));
    std::vector<float> row = HostRow(logits, 0);
    KVG_ASSIGN_OR_RETURN(StepResult step, seq->AfterForward(row.data()));
    if (on_token) on_token(step.token);
  }
  return seq->Result();
}

namespace {

// Prefills `ids` into a cache gathering what the compressor needs.
struct Prefilled {
  std::unique_ptr<compress::CacheCompression> compression;
  std::unique_ptr<SequenceKvCache> cache;
};

absl::StatusOr<Prefilled> Prefill(LlamaModel& model, const std::vector<int32_t>& ids,
                                  const compress::CompressionSpec& spec) {
  if (ids.empty()) return absl::InvalidArgumentError("ids must not be empty");
  Prefilled p;
  KVG_ASSIGN_OR_RETURN(p.compression, compress::CacheCompression::Create(spec));
  KvCacheOptions options = model.CacheOptions(static_cast<int64_t>(ids.size()));
  p.compression->ConfigureCache(options);
  p.cache = std::make_unique<SequenceKvCache>(options);
  ForwardItem item{.cache = p.cache.get(), .tokens = ids};
  KVG_RETURN_IF_ERROR(model.Forward({&item, 1}).status());
  return p;
}

}  // namespace

absl::StatusOr<std::vector<std::vector<std::vector<int32_t>>>> Engine::Kept(
    const std::vector<int32_t>& ids, const compress::CompressionSpec& spec) {
  LlamaModel& model = *impl_->model;
  KVG_ASSIGN_OR_RETURN(Prefilled p, Prefill(model, ids, spec));
  KVG_RETURN_IF_ERROR(
      p.compression->AfterForward(*p.cache, config(), RopeOf(model), true, {}, /*strict=*/true));
  std::vector<std::vector<std::vector<int32_t>>> kept;
  for (int64_t l = 0; l < config().num_layers; ++l) kept.push_back(p.cache->Positions(l));
  return kept;
}

absl::StatusOr<std::vector<std::vector<std::vector<float>>>> Engine::Scores(
    const std::vector<int32_t>& ids, const compress::CompressionSpec& spec) {
  LlamaModel& model = *impl_->model;
  KVG_ASSIGN_OR_RETURN(Prefilled p, Prefill(model, ids, spec));
  auto* scorer = dynamic_cast<compress::ScoringCompressor*>(&p.compression->compressor());
  if (scorer == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressor '", spec.compressor, "' does not score tokens"));
  }
  compress::CompressContext ctx{.config = &config(),
                                .cache = p.cache.get(),
                                .ratio = spec.ratio,
                                .protected_positions = {},
                                .prefill = true,
                                .rope = RopeOf(model)};
  std::vector<std::vector<std::vector<float>>> out;
  for (int64_t l = 0; l < config().num_layers; ++l) {
    const int64_t keep = p.compression->compressor().Budget(ctx, l);
    KVG_ASSIGN_OR_RETURN(at::Tensor s, scorer->Score(ctx, l, keep));
    s = s.to(at::kCPU, at::kFloat).contiguous();
    std::vector<std::vector<float>> layer(s.size(0));
    for (int64_t h = 0; h < s.size(0); ++h) {
      const float* row = s[h].data_ptr<float>();
      layer[h].assign(row, row + s.size(1));
    }
    out.push_back(std::move(layer));
  }
  return out;
}

}  // namespace kvguard::engine
