#include "services/server/request_validation.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressors/cache_compression.h"
#include "compressors/registry.h"

namespace kvguard::server {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::GenerateRequest& in,
                                               const engine::ModelConfig& c,
                                               const engine::Tokenizer* tokenizer,
                                               int64_t max_prompt_tokens) {
  std::vector<int32_t> ids;
  switch (in.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (in.text().empty()) return Bad("prompt.text", "must not be empty");
      if (tokenizer == nullptr)
        return Bad("prompt.text", "this model has no tokenizer; send prompt.token_ids");
      auto encoded = tokenizer->Encode(in.text());
      if (!encoded.ok()) return Bad("prompt.text", encoded.status().message());
      ids = std::move(*encoded);
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      ids.assign(in.token_ids().ids().begin(), in.token_ids().ids().end());
      break;
    default:
      return Bad("prompt", "set prompt.text or prompt.token_ids");
  }
  if (ids.empty()) return Bad("prompt", "is empty");
  if (max_prompt_tokens > 0 && static_cast<int64_t>(ids.size()) > max_prompt_tokens) {
    return Bad("prompt", absl::StrCat(ids.size(), " tokens; this server accepts at most ",
                                      max_prompt_tokens, " (--max_prompt_tokens)"));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= c.vocab_size) {
      return Bad(absl::StrCat("prompt.token_ids[", i, "]"),
                 absl::StrCat(ids[i], " is outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  if (static_cast<int64_t>(ids.size()) >= c.max_position_embeddings) {
    return Bad("prompt",
               absl::StrCat(ids.size(), " tokens do not fit the context of ",
                            c.max_position_embeddings, " (one position is needed to generate)"));
  }
  return ids;
}

absl::Status Sampling(const v1::GenerateRequest& in, engine::SamplingParams& s) {
  const v1::SamplingParams& p = in.sampling();
  if (!std::isfinite(p.temperature()) || p.temperature() < 0)
    return Bad("sampling.temperature", "must be >= 0");
  if (p.top_k() < 0) return Bad("sampling.top_k", "must be >= 0");
  if (p.has_top_p() && !(p.top_p().value() > 0 && p.top_p().value() <= 1))
    return Bad("sampling.top_p", "must be in (0, 1]");
  if (p.has_repetition_penalty() &&
      !(p.repetition_penalty().value() > 0 && std::isfinite(p.repetition_penalty().value()))) {
    return Bad("sampling.repetition_penalty", "must be > 0");
  }
  if (p.no_repeat_ngram() == 1 || p.no_repeat_ngram() > 1024)
    return Bad("sampling.no_repeat_ngram", "must be 0 (off) or in [2, 1024]");
  if (in.logprobs() > 20) return Bad("logprobs", "at most 20");
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.has_top_p() ? p.top_p().value() : 1.0;
  s.repetition_penalty = p.has_repetition_penalty() ? p.repetition_penalty().value() : 1.0;
  s.no_repeat_ngram = static_cast<int32_t>(p.no_repeat_ngram());
  s.seed = p.has_seed() ? p.seed().value() : 0;
  s.logprobs = static_cast<int32_t>(in.logprobs());
  return absl::OkStatus();
}

absl::Status Stopping(const v1::GenerateRequest& in, const engine::ModelConfig& c,
                      const engine::Tokenizer* tokenizer, int64_t max_new_tokens,
                      engine::GenerateRequest& r) {
  const v1::StoppingParams& p = in.stopping();
  if (p.max_new_tokens() < 1) return Bad("stopping.max_new_tokens", "must be >= 1");
  if (p.max_new_tokens() > 1u << 20) return Bad("stopping.max_new_tokens", "must be <= 1048576");
  if (max_new_tokens > 0 && p.max_new_tokens() > max_new_tokens) {
    return Bad("stopping.max_new_tokens",
               absl::StrCat(p.max_new_tokens(), " is over this server's limit of ", max_new_tokens,
                            " (--max_new_tokens)"));
  }
  r.max_new_tokens = static_cast<int32_t>(p.max_new_tokens());
  for (int i = 0; i < p.stop_size(); ++i) {
    if (p.stop(i).empty()) return Bad(absl::StrCat("stopping.stop[", i, "]"), "must not be empty");
    if (tokenizer == nullptr)
      return Bad("stopping.stop", "this model has no tokenizer for stop strings");
    r.stop_strings.push_back(p.stop(i));
  }
  for (int i = 0; i < p.stop_token_ids_size(); ++i) {
    const int32_t id = p.stop_token_ids(i);
    if (id < 0 || id >= c.vocab_size) {
      return Bad(absl::StrCat("stopping.stop_token_ids[", i, "]"), "is outside the vocabulary");
    }
    r.stop_token_ids.push_back(id);
  }
  r.ignore_eos = p.ignore_eos();
  return absl::OkStatus();
}

absl::Status Compression(const v1::GenerateRequest& in, const ServerDefaults& d, int64_t prompt_len,
                         engine::GenerateRequest& r) {
  const v1::CompressionParams& p = in.compression();
  compress::CompressionSpec& spec = r.compression;
  spec.compressor = p.compressor().empty() ? d.compressor : p.compressor();
  spec.ratio = p.has_ratio() ? p.ratio().value() : d.ratio;
  spec.compress_every = p.compress_every() > 0 ? p.compress_every() : d.compress_every;
  if (spec.compressor.empty() || spec.compressor == "none") {
    if (p.has_ratio() && p.ratio().value() != 0)
      return Bad("compression.ratio", "needs compression.compressor");
    spec = {};
    return absl::OkStatus();
  }
  if (!(spec.ratio >= 0 && spec.ratio < 1)) return Bad("compression.ratio", "must be in [0, 1)");
  for (const auto& [k, v] : p.options()) spec.options.push_back(absl::StrCat(k, "=", v));
  if (p.has_question_begin() || p.has_question_end()) {
    const int32_t begin = p.question_begin().value(), end = p.question_end().value();
    if (!p.has_question_begin() || !p.has_question_end() || begin < 0 || end <= begin ||
        end > prompt_len) {
      return Bad("compression.question_begin/question_end",
                 "must be a non-empty span inside the prompt");
    }
    spec.options.push_back(absl::StrCat("question_begin=", begin));
    spec.options.push_back(absl::StrCat("question_end=", end));
  }
  // Creating the compressor validates its name and options.
  auto created = compress::Registry::Global().Create(spec.compressor, spec.options);
  if (!created.ok()) {
    return Bad(p.options().empty() && !p.has_question_begin() ? "compression.compressor"
                                                              : "compression.options",
               created.status().message());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ValidatedRequest> ValidateGenerateRequest(const v1::GenerateRequest& in,
                                                         const engine::ModelConfig& config,
                                                         const engine::Tokenizer* tokenizer,
                                                         const ServerDefaults& defaults) {
  if (in.request_id().size() > 256) return Bad("request_id", "at most 256 bytes");
  ValidatedRequest out;
  KVG_ASSIGN_OR_RETURN(out.request.prompt_ids,
                       PromptIds(in, config, tokenizer, defaults.max_prompt_tokens));
  KVG_RETURN_IF_ERROR(Sampling(in, out.request.sampling));
  KVG_RETURN_IF_ERROR(Stopping(in, config, tokenizer, defaults.max_new_tokens, out.request));
  KVG_RETURN_IF_ERROR(
      Compression(in, defaults, static_cast<int64_t>(out.request.prompt_ids.size()), out.request));
  if (in.compression().has_guard() && in.compression().guard().value() &&
      !defaults.guard_available) {
    return Bad("compression.guard", "this server runs without a guard (start it with --guard)");
  }
  out.guarded = defaults.guard_available &&
                (!in.compression().has_guard() || in.compression().guard().value());
  if (!in.gold_answer().empty()) {
    int64_t v;
    if (!absl::SimpleAtoi(in.gold_answer(), &v)) return Bad("gold_answer", "must be an integer");
  }
  return out;
}

}  // namespace kvguard::server
