// File: services/server/step_report.h
//
// Builds the guard's per-token StepReport from one engine step. Shared by the
// server's scheduler (live) and the research sweep (offline traces), so the
// guard sees identical inputs in both.
#pragma once

#include <cstdint>
#include <string>

#include "kvguard/v1/guard.pb.h"
#include "services/engine/model_config.h"
#include "services/engine/sequence.h"
#include "services/engine/tokenizer.h"

namespace kvguard::server {

struct ReportContext {
  std::string session_id;
  uint64_t cache_id = 0;
  uint64_t cache_version = 0;
  v1::Mode mode = v1::MODE_NORMAL;
  const float* logits = nullptr;  // full row, research mode only
};

v1::StepReport MakeStepReport(const engine::StepResult& r, const engine::ModelConfig& config,
                              const engine::Tokenizer* tokenizer, const ReportContext& ctx);

}  // namespace kvguard::server
