#include "services/server/step_report.h"

#include <algorithm>

namespace kvguard::server {

v1::StepReport MakeStepReport(const engine::StepResult& r, const engine::ModelConfig& c,
                              const engine::Tokenizer* tokenizer, const ReportContext& ctx) {
  v1::StepReport rep;
  rep.set_session_id(ctx.session_id);
  rep.set_step(static_cast<uint32_t>(r.step));
  rep.set_token_id(r.token.id);
  if (tokenizer != nullptr) rep.set_token_text(tokenizer->TokenBytes(r.token.id));
  rep.set_entropy(r.token.entropy);
  for (const auto& t : r.report_top) rep.add_top_logprobs(t.logprob);
  rep.set_chosen_logprob(r.token.logprob);
  rep.set_logit_margin(r.token.margin);
  v1::KvHandle* kv = rep.mutable_kv();
  kv->set_cache_id(ctx.cache_id);
  kv->set_version(ctx.cache_version);
  kv->set_retained_tokens(r.kv.retained_slots / std::max<int64_t>(1, c.num_layers * c.num_kv_heads));
  kv->set_total_tokens(r.kv.total_tokens);
  kv->set_bytes(r.kv.bytes);
  kv->set_ratio(r.ratio);
  kv->set_mode(ctx.mode);
  for (int32_t p : r.evicted_positions) rep.add_evicted_positions(p);
  for (float s : r.evicted_attention) rep.add_evicted_attention(s);
  if (ctx.logits != nullptr) rep.mutable_logits()->Add(ctx.logits, ctx.logits + c.vocab_size);
  return rep;
}

}  // namespace kvguard::server
