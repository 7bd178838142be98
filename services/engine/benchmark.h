// File: services/engine/benchmark.h
//
// Measures prefill and cached-decode throughput of a model on a device, with
// `batch` sequences decoded together (one batched forward per step).
// Prompts are seeded random ids; decoding is greedy (argmax on the device,
// one id per sequence copied back per step, as a real server would).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/engine/engine.h"

namespace kvguard::engine {

struct BenchmarkOptions {
  int64_t batch = 1;
  int64_t prompt_tokens = 32;
  int64_t decode_tokens = 256;
  int64_t warmup_steps = 8;
  bool fused_cpu_decode = true;  // false: CPU decode steps on libtorch ops (for comparison)
};

struct BenchmarkResult {
  double prefill_tokens_per_s = 0;
  double decode_tokens_per_s = 0;  // summed over the batch
  double decode_ms_per_step = 0;
  int64_t steps = 0;
  std::string dtype;    // the compute dtype measured ("auto" resolved)
  std::string blas;     // CPU: the BLAS library libtorch's f32 matmuls ran on (name and path)
  std::string matmul;   // the product paths: decode MatVec (CPU) and the prefill GEMM
  std::string weights;  // "native" or "int8"
  // "cpu loops" (llama_decode_cpu.cc) or "libtorch ops": what the decode steps ran on.
  std::string decode_path;
  // int8 weights only: their logits against the native-weight model's on the
  // same greedy trajectory (the native model's choices fed to both), over the
  // prefill's last position and every warm-up and timed decode step.
  double logit_rel_rms_error = 0;  // mean over steps of ||int8 - native|| / ||native||
  double top1_agreement = 1;       // share of steps whose argmax agrees
};

// Per compressor and ratio: final KV bytes and decode time per step relative
// to no compression, measured in the same run on the same prompt.
struct CompressorBenchmarkOptions {
  std::vector<std::string> compressors;  // empty = every built-in
  std::vector<double> ratios = {0.25, 0.5, 0.75, 0.9};
  int64_t prompt_tokens = 256;
  int64_t decode_tokens = 128;
  int64_t compress_every = 0;
  int64_t batch = 1;  // sequences decoded together (the server's batch)
  int repeats = 3;    // best-of, to damp noise on a shared machine
};

struct CompressorBenchmarkRow {
  std::string compressor;
  double ratio = 0;
  int64_t kv_bytes = 0;
  double kv_fraction = 1;  // kv_bytes / uncompressed kv_bytes
  double ms_per_step = 0;
  double relative_step_time = 1;  // ms_per_step / uncompressed ms_per_step
};

// `on_progress(done, total)` is called after each configuration.
absl::StatusOr<std::vector<CompressorBenchmarkRow>> RunCompressorBenchmark(
    Engine& engine, const CompressorBenchmarkOptions& options,
    const std::function<void(int, int)>& on_progress = nullptr);

absl::StatusOr<BenchmarkResult> RunBenchmark(const std::string& model_path,
                                             const EngineOptions& engine_options,
                                             const BenchmarkOptions& options);

}  // namespace kvguard::engine
