#include "services/server/wire.h"

namespace kvguard::server {

v1::FinishReason ToWire(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::GenerateResponse ToWire(const std::string& request_id, const TokenEvent& e) {
  v1::GenerateResponse msg;
  msg.set_request_id(request_id);
  v1::TokenChunk* chunk = msg.mutable_chunk();
  chunk->add_token_ids(e.token_id);
  chunk->set_text_delta(e.text_delta);
  if (e.logprobs) {
    v1::StepLogprobs* lp = chunk->add_logprobs();
    lp->set_token_id(e.logprobs->id);
    lp->set_logprob(e.logprobs->logprob);
    for (const auto& t : e.logprobs->top_logprobs) {
      v1::TokenLogprob* top = lp->add_top();
      top->set_token_id(t.id);
      top->set_logprob(t.logprob);
    }
  }
  v1::StepState* state = chunk->mutable_state();
  state->set_step(e.step);
  state->set_mode(e.mode);
  state->set_hazard(e.hazard);
  state->set_ratio(e.ratio);
  state->set_kv_bytes(e.kv_bytes);
  state->set_retained_tokens(e.retained_tokens);
  return msg;
}

v1::GenerateResponse ToWire(const std::string& request_id, const CompletionEvent& e) {
  v1::GenerateResponse msg;
  msg.set_request_id(request_id);
  v1::GenerationComplete* done = msg.mutable_complete();
  done->set_finish_reason(ToWire(e.finish_reason));
  done->mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(e.prompt_tokens));
  done->mutable_usage()->set_completion_tokens(static_cast<uint32_t>(e.completion_tokens));
  done->set_kv_bytes(e.kv_bytes);
  done->set_kv_bytes_saved(e.kv_bytes_saved);
  v1::Catastrophes* cat = done->mutable_catastrophes();
  cat->set_looping(e.outcome.looped);
  cat->set_loop_onset(e.outcome.loop_onset);
  cat->set_non_termination(e.outcome.non_terminated);
  cat->set_wrong_answer(e.outcome.wrong_answer);
  cat->set_answered(e.outcome.answer.has_value());
  cat->set_answer(e.outcome.answer.value_or(0));
  done->set_text(e.text);
  done->set_time_to_first_token_ms(e.time_to_first_token_ms);
  done->set_total_ms(e.total_ms);
  for (const auto& [mode, steps] : e.mode_steps) (*done->mutable_mode_steps())[mode] = steps;
  done->set_fail_safe_events(e.fail_safe_events);
  return msg;
}

}  // namespace kvguard::server
