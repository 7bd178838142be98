// File: loadtest/load_generator.h
//
// Drives a kvguard-server with streaming Generate calls and records, per
// request, what a client sees: time to first token, every inter-token gap,
// end-to-end latency, tokens, status, and the server's catastrophe flags.
//
// Two load shapes (the vLLM / GenAI-Perf definitions):
//  - closed loop: `concurrency` workers, each sends its next request when
//    the previous one finishes;
//  - open loop: Poisson arrivals at `rate` requests/s (exponential gaps from
//    a seeded generator), each request on its own thread.
// Every run is bounded by a request count and a wall-clock limit, and only
// loopback targets are accepted.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvguard/v1/generation.pb.h"
#include "services/client/generation_client.h"

namespace kvguard::loadtest {

struct PromptItem {
  std::string id;
  std::string text;
  std::optional<int64_t> gold;  // for accuracy / wrong-answer rate
};

struct LoadSpec {
  std::string name;
  // host:port, "ipv4:h1:p1,h2:p2" or "dns:///host:port"; loopback hosts only
  std::string target;
  client::ChannelOptions channel;  // lb_policy, TLS, bearer token
  std::string mode = "closed";     // "closed" | "open"
  int concurrency = 1;             // closed loop
  double rate = 1.0;               // open loop, requests per second
  int requests = 16;               // bound on requests sent
  double max_seconds = 60;         // bound on wall time
  double drain_seconds = 0;        // after max_seconds, in-flight requests get this long to finish
  int max_new_tokens = 128;
  double temperature = 0;
  std::string compressor;  // "" = server default
  double ratio = -1;       // < 0 = server default
  std::string guard;       // "" = server default, "true" / "false"
  uint64_t seed = 1;
};

struct RequestRecord {
  std::string prompt_id;
  std::string status = "OK";  // gRPC status code name
  double start_s = 0;         // since the run started
  double ttft_s = 0, e2e_s = 0;
  std::vector<double> itl_s;
  int64_t output_tokens = 0;
  bool looped = false, non_terminated = false, wrong_answer = false, correct = false;
  int64_t kv_bytes = 0, kv_bytes_saved = 0;
  uint32_t fail_safe_events = 0;
};

struct LoadResult {
  LoadSpec spec;
  double duration_s = 0;
  std::vector<RequestRecord> records;
};

// InvalidArgument for a non-loopback target or a bad spec.
absl::Status ValidateSpec(const LoadSpec& spec);
bool IsLoopbackTarget(const std::string& target);

absl::StatusOr<LoadResult> RunLoad(
    const LoadSpec& spec, const std::vector<PromptItem>& prompts,
    const std::function<void(int done, int total)>& progress = nullptr);

}  // namespace kvguard::loadtest
