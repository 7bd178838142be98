// File: services/server/stream_events.h
//
// What the scheduler hands a request's stream, as plain values: one
// TokenEvent per generated token and one CompletionEvent at the end. The
// gRPC service turns them into the wire's TokenChunk / GenerationComplete
// (wire.h); benchmarks and tests read them directly.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "guard_sidecar/catastrophe.h"
#include "kvguard/v1/common.pb.h"
#include "services/engine/engine.h"

namespace kvguard::server {

struct TokenEvent {
  int32_t token_id = 0;
  std::string text_delta;  // UTF-8 safe; stop strings withheld
  // The token's logprob and the top alternatives, when the client asked.
  std::optional<engine::SampledToken> logprobs;
  // The sequence's state after the step, as the guard left it.
  uint32_t step = 0;
  v1::Mode mode = v1::MODE_NORMAL;
  float hazard = 0;
  double ratio = 0;
  int64_t kv_bytes = 0;
  int64_t retained_tokens = 0;
};

struct CompletionEvent {
  engine::FinishReason finish_reason = engine::FinishReason::kLength;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int64_t kv_bytes = 0, kv_bytes_saved = 0;
  guard::Outcome outcome;  // looping, non-termination, answer
  std::string text;
  double time_to_first_token_ms = 0, total_ms = 0;
  std::map<std::string, uint32_t> mode_steps;  // steps per mode ("restart": 1 after one)
  uint32_t fail_safe_events = 0;
};

// Where a request's events go (the gRPC stream). Implementations queue and
// never block the scheduler.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  virtual void Token(TokenEvent event) = 0;
  virtual void Complete(CompletionEvent event) = 0;
  // Ends the stream: OK after Complete, or an error.
  virtual void Finish(const absl::Status& status) = 0;
  // The client cancelled or its deadline passed.
  [[nodiscard]] virtual bool Cancelled() const = 0;
};

}  // namespace kvguard::server
