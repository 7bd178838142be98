// File: services/engine/benchmark.h
//
// Measures prefill and cached-decode throughput of a model on a device, with
// `batch` sequences decoded together (one batched forward per step).
// Prompts are seeded random ids; decoding is greedy (argmax on the device,
// one id per sequence copied back per step, as a real server would).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "services/engine/engine.h"

namespace kvguard::engine {

struct BenchmarkOptions {
  int64_t batch = 1;
  int64_t prompt_tokens = 32;
  int64_t decode_tokens = 256;
  int64_t warmup_steps = 8;
};

struct BenchmarkResult {
  double prefill_tokens_per_s = 0;
  double decode_tokens_per_s = 0;  // summed over the batch
  double decode_ms_per_step = 0;
  int64_t steps = 0;
};

absl::StatusOr<BenchmarkResult> RunBenchmark(const std::string& model_path,
                                             const EngineOptions& engine_options,
                                             const BenchmarkOptions& options);

}  // namespace kvguard::engine
