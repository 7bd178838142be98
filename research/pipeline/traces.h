// File: research/pipeline/traces.h
//
// The trace directory written by `kvguard sweep` and read by
// `kvguard train-predictor` / `kvguard evaluate`. Schema (see TRACES.md):
//
//   DIR/manifest.json            model, prompt set, compressor options, configurations, feature
//   names DIR/<config>.jsonl           one line per trace (prompt x configuration): outcome and
//   onset DIR/<config>.f32             the traces' per-token guard feature rows, float32,
//                                kNumFeatures columns, traces in .jsonl order
//   DIR/<config>.done            written last: the shard is complete (resume skips it)
//
// <config> is "none" or "<compressor>@<ratio>".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace kvguard::research {

struct Trace {
  std::string prompt_id;
  std::string compressor;  // "none" for uncompressed
  double ratio = 0;
  std::string outcome;  // OutcomeKindName
  bool catastrophic = false, looped = false, non_terminated = false, correct = false;
  int64_t onset = -1;  // first catastrophic token (loop onset, or the non-termination proxy)
  int64_t tokens = 0;  // generated tokens = feature rows
  int64_t kv_bytes = 0, kv_bytes_uncompressed = 0;
  // Sum over the positions prefill compression evicted of the attention each
  // had received from the prompt's queries (mean over queries, layers, heads):
  // what the compressor threw away, known before the first token.
  double prefill_evicted_attention = 0;
  int64_t row_offset = 0;       // first row in the shard's .f32
  std::vector<float> features;  // tokens x num_features (filled when loaded)
};

nlohmann::json TraceToJson(const Trace& t);
absl::StatusOr<Trace> TraceFromJson(const nlohmann::json& j);
std::string ConfigName(const std::string& compressor, double ratio);
// The "key=value" options of `compressor` among "name:key=value" entries
// (sweep --compressor-opt, recorded in the manifest for evaluate's live runs).
std::vector<std::string> CompressorOptionsFor(const std::string& compressor,
                                              const std::vector<std::string>& entries);

// DIR/manifest.json (NotFound / InvalidArgument naming the file).
absl::StatusOr<nlohmann::json> ReadManifest(const std::string& dir);

// Every complete shard of `dir` (features loaded).
absl::StatusOr<std::vector<Trace>> LoadTraces(const std::string& dir, int64_t* num_features);

}  // namespace kvguard::research
