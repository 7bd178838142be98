// File: services/server/request_validation.h
//
// Turns a client's GenerateRequest into an engine request, or an
// INVALID_ARGUMENT status whose message names the offending field
// ("stopping.max_new_tokens must be >= 1", "prompt.token_ids[3] = 9999 is
// outside the vocabulary [0, 640)", "compression.options: compressor
// 'snapkv' has no option 'window'", ...).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "kvguard/v1/generation.pb.h"
#include "services/engine/engine.h"

namespace kvguard::server {

struct ServerDefaults {
  std::string compressor;  // used when the request names none
  double ratio = 0.0;
  // Requests that leave compression.compress_every at 0 get this: evict in
  // chunks every N decode steps (1 = whenever over budget, every step).
  int64_t compress_every = 0;
  bool guard_available = false;
  // Operator limits (--max_prompt_tokens, --max_new_tokens); 0 = only the
  // model's context and the protocol's 2^20 bound. Over a limit: INVALID_ARGUMENT
  // naming the flag.
  int64_t max_prompt_tokens = 0;
  int64_t max_new_tokens = 0;
};

struct ValidatedRequest {
  engine::GenerateRequest request;
  bool guarded = false;
};

absl::StatusOr<ValidatedRequest> ValidateGenerateRequest(const v1::GenerateRequest& in,
                                                         const engine::ModelConfig& config,
                                                         const engine::Tokenizer* tokenizer,
                                                         const ServerDefaults& defaults);

}  // namespace kvguard::server
