// Test helper: crafted StepReports for the guard's tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvguard/v1/guard.pb.h"

namespace kvguard::guard::testing {

struct ReportSpec {
  uint32_t step = 0;
  int32_t token = 0;
  float entropy = 0.5f;
  std::string text;
  float top_gap = 1.0f;  // top_logprobs[i] = -0.05 - i * top_gap (greedy: chosen = top[0])
  int64_t total_tokens = 0;
  int64_t retained_tokens = 0;
  double ratio = 0.0;
  v1::Mode mode = v1::MODE_NORMAL;
};

inline v1::StepReport MakeReport(const std::string& session, const ReportSpec& s) {
  v1::StepReport r;
  r.set_session_id(session);
  r.set_step(s.step);
  r.set_token_id(s.token);
  r.set_token_text(s.text);
  r.set_entropy(s.entropy);
  for (int i = 0; i < 20; ++i) r.add_top_logprobs(-0.05f - static_cast<float>(i) * s.top_gap);
  r.set_chosen_logprob(r.top_logprobs(0));
  r.set_logit_margin(s.top_gap);
  r.mutable_kv()->set_total_tokens(s.total_tokens);
  r.mutable_kv()->set_retained_tokens(s.retained_tokens);
  r.mutable_kv()->set_ratio(s.ratio);
  r.mutable_kv()->set_bytes(1000 * s.retained_tokens);
  r.mutable_kv()->set_mode(s.mode);
  return r;
}

}  // namespace kvguard::guard::testing
