// kvguard-client: stream one generation from a kvguard-server.
//
//   build/bin/kvguard-client --server 127.0.0.1:50051 --prompt "Tom has 3 apples." --max_new_tokens
//   32
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "proto/kvguard/v1/mode_name.h"
#include "services/client/generation_client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "kvguard-server address");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(std::string, ids, "", "prompt token ids, comma separated (instead of --prompt)");
ABSL_FLAG(int, max_new_tokens, 64, "tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "0 = off");
ABSL_FLAG(double, top_p, 1.0, "nucleus mass");
ABSL_FLAG(int64_t, seed, 0, "sampling seed");
ABSL_FLAG(double, repetition_penalty, 1.0, "HF repetition penalty (1 = off)");
ABSL_FLAG(int, no_repeat_ngram, 0, "0 = off; N >= 2: no N-gram of the generated text twice");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past EOS");
ABSL_FLAG(std::string, compressor, "", "compressor name (empty = server default)");
ABSL_FLAG(double, ratio, -1, "compression ratio (negative = server default)");
ABSL_FLAG(std::string, guard, "", "true | false | empty (server default)");
ABSL_FLAG(int, deadline_ms, 0, "call deadline (0 = none)");
ABSL_FLAG(int, connect_timeout_ms, 5000,
          "wait this long for the connection before sending (0 = send at once, fail fast if not "
          "connected)");
ABSL_FLAG(std::string, lb_policy, "",
          "round_robin: spread calls over every address of a dns:/// target (headless Service)");
ABSL_FLAG(bool, tls, false, "TLS (implied by any --tls_* file; the system roots verify otherwise)");
ABSL_FLAG(std::string, tls_ca_file, "", "PEM roots that verify the server");
ABSL_FLAG(std::string, tls_cert_file, "", "client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_server_name, "", "name expected in the server's certificate");
ABSL_FLAG(std::string, auth_token_file, "", "file holding the bearer token to send");
ABSL_FLAG(bool, json, false, "print the token ids and the final message as JSON");
ABSL_FLAG(bool, info, false, "print the model info and exit");

int main(int argc, char** argv) {
  // --help lists this binary's flags (absl matches only files named after the program).
  absl::SetFlagsUsageConfig({.contains_help_flags = [](absl::string_view) { return true; }});
  absl::ParseCommandLine(argc, argv);
  using namespace kvguard;
  std::string token;
  if (const std::string path = absl::GetFlag(FLAGS_auth_token_file); !path.empty()) {
    auto text = ReadFileToString(path);
    if (!text.ok()) {
      std::cerr << "kvguard-client: " << text.status().message() << "\n";
      return 2;
    }
    token = std::string(absl::StripAsciiWhitespace(*text));
  }
  auto channel =
      client::OpenChannel(absl::GetFlag(FLAGS_server),
                          {.lb_policy = absl::GetFlag(FLAGS_lb_policy),
                           .tls = absl::GetFlag(FLAGS_tls),
                           .tls_files = {.cert_file = absl::GetFlag(FLAGS_tls_cert_file),
                                         .key_file = absl::GetFlag(FLAGS_tls_key_file),
                                         .ca_file = absl::GetFlag(FLAGS_tls_ca_file),
                                         .server_name = absl::GetFlag(FLAGS_tls_server_name)}});
  if (!channel.ok()) {
    std::cerr << "kvguard-client: " << channel.status().message() << "\n";
    return 2;
  }
  client::GenerationClient client(*channel, absl::GetFlag(FLAGS_server), token);
  if (absl::GetFlag(FLAGS_info)) {
    auto info = client.GetModelInfo();
    if (!info.ok()) {
      std::cerr << "kvguard-client: " << info.status().message() << "\n";
      return 1;
    }
    std::cout << info->DebugString();
    return 0;
  }
  v1::GenerateRequest req;
  if (!absl::GetFlag(FLAGS_ids).empty()) {
    for (absl::string_view part :
         absl::StrSplit(absl::GetFlag(FLAGS_ids), ',', absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) {
        std::cerr << "kvguard-client: bad id '" << part << "' in --ids\n";
        return 2;
      }
      req.mutable_token_ids()->add_ids(id);
    }
  } else {
    req.set_text(absl::GetFlag(FLAGS_prompt));
  }
  req.mutable_stopping()->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  req.mutable_stopping()->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  req.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  req.mutable_sampling()->set_top_k(absl::GetFlag(FLAGS_top_k));
  req.mutable_sampling()->mutable_top_p()->set_value(
      static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  req.mutable_sampling()->mutable_seed()->set_value(
      static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  if (absl::GetFlag(FLAGS_repetition_penalty) != 1.0) {
    req.mutable_sampling()->mutable_repetition_penalty()->set_value(
        static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty)));
  }
  // Negative values reach the server as an out-of-range number, which it refuses by name.
  req.mutable_sampling()->set_no_repeat_ngram(
      static_cast<uint32_t>(std::max(absl::GetFlag(FLAGS_no_repeat_ngram), -1)));
  req.mutable_compression()->set_compressor(absl::GetFlag(FLAGS_compressor));
  if (absl::GetFlag(FLAGS_ratio) >= 0)
    req.mutable_compression()->mutable_ratio()->set_value(absl::GetFlag(FLAGS_ratio));
  if (!absl::GetFlag(FLAGS_guard).empty()) {
    req.mutable_compression()->mutable_guard()->set_value(absl::GetFlag(FLAGS_guard) == "true");
  }
  client::CallOptions options;
  if (absl::GetFlag(FLAGS_deadline_ms) > 0)
    options.deadline = std::chrono::milliseconds(absl::GetFlag(FLAGS_deadline_ms));
  options.connect_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_connect_timeout_ms));
  const bool json = absl::GetFlag(FLAGS_json);
  // The guard's mode timeline: (first step, mode) at every change.
  std::vector<std::pair<uint32_t, std::string>> timeline;
  auto out = client.Generate(
      req,
      [&](const v1::TokenChunk& c) {
        if (!json) std::cout << c.text_delta() << std::flush;
        if (!c.has_state() || c.state().mode() == v1::MODE_UNSPECIFIED) return;
        const std::string mode(v1::ModeName(c.state().mode()));
        if (timeline.empty() || timeline.back().second != mode)
          timeline.emplace_back(c.state().step(), mode);
      },
      options);
  if (!out.ok()) {
    std::cerr << "kvguard-client: " << absl::StatusCodeToString(out.status().code()) << ": "
              << out.status().message() << "\n";
    return 1;
  }
  const auto& c = out->complete;
  if (json) {
    nlohmann::json j = {
        {"output_ids", out->token_ids},
        {"text", out->text},
        {"finish_reason", v1::FinishReason_Name(c.finish_reason())},
        {"kv_bytes", c.kv_bytes()},
        {"kv_bytes_saved", c.kv_bytes_saved()},
        {"looping", c.catastrophes().looping()},
        {"non_termination", c.catastrophes().non_termination()},
        {"answer", c.catastrophes().answered() ? nlohmann::json(c.catastrophes().answer())
                                               : nlohmann::json()},
        {"fail_safe_events", c.fail_safe_events()},
        {"mode_timeline", nlohmann::json::array()},
        {"mode_steps", nlohmann::json::object()},
        {"ttft_ms", 1000 * out->time_to_first_token_s},
        {"total_ms", 1000 * out->total_s}};
    for (const auto& [step, mode] : timeline)
      j["mode_timeline"].push_back({{"step", step}, {"mode", mode}});
    for (const auto& [mode, steps] : c.mode_steps()) j["mode_steps"][mode] = steps;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << "\n[" << c.usage().completion_tokens() << " tokens, "
              << v1::FinishReason_Name(c.finish_reason()) << ", kv " << c.kv_bytes() << " B, saved "
              << c.kv_bytes_saved() << " B]\n";
    // Only when the guard did something: an unguarded or calm run is NORMAL throughout.
    if (timeline.size() > 1 || (timeline.size() == 1 && timeline[0].second != "normal")) {
      std::cout << "[guard modes:";
      for (const auto& [step, mode] : timeline) std::cout << " " << mode << "@" << step;
      std::cout << "]\n";
    }
  }
  return 0;
}
