#include "loadtest/load_generator.h"

#include <atomic>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/client/generation_client.h"

namespace kvguard::loadtest {
namespace {

using Clock = std::chrono::steady_clock;

v1::GenerateRequest BuildRequest(const LoadSpec& spec, const PromptItem& p, uint64_t seed) {
  v1::GenerateRequest r;
  r.set_request_id(absl::StrCat(spec.name, "-", p.id, "-", seed));
  r.set_text(p.text);
  r.mutable_stopping()->set_max_new_tokens(spec.max_new_tokens);
  r.mutable_sampling()->set_temperature(static_cast<float>(spec.temperature));
  r.mutable_sampling()->mutable_seed()->set_value(seed);
  if (!spec.compressor.empty()) r.mutable_compression()->set_compressor(spec.compressor);
  if (spec.ratio >= 0) r.mutable_compression()->mutable_ratio()->set_value(spec.ratio);
  if (!spec.guard.empty())
    r.mutable_compression()->mutable_guard()->set_value(spec.guard == "true");
  if (p.gold) r.set_gold_answer(absl::StrCat(*p.gold));
  return r;
}

RequestRecord Call(client::GenerationClient& client, const LoadSpec& spec, const PromptItem& p,
                   uint64_t seed, Clock::time_point run_start, Clock::time_point hard_deadline) {
  RequestRecord rec;
  rec.prompt_id = p.id;
  rec.start_s = std::chrono::duration<double>(Clock::now() - run_start).count();
  client::CallOptions options;
  options.deadline =
      std::chrono::duration_cast<std::chrono::milliseconds>(hard_deadline - Clock::now());
  auto out = client.Generate(BuildRequest(spec, p, seed), nullptr, options);
  if (!out.ok()) {
    rec.status = absl::StatusCodeToString(out.status().code());
    return rec;
  }
  rec.ttft_s = out->time_to_first_token_s;
  rec.itl_s = out->inter_token_s;
  rec.e2e_s = out->total_s;
  rec.output_tokens = static_cast<int64_t>(out->token_ids.size());
  const auto& c = out->complete.catastrophes();
  rec.looped = c.looping();
  rec.non_terminated = c.non_termination();
  rec.wrong_answer = c.wrong_answer();
  rec.correct = p.gold.has_value() && c.answered() && c.answer() == *p.gold;
  rec.kv_bytes = out->complete.kv_bytes();
  rec.kv_bytes_saved = out->complete.kv_bytes_saved();
  rec.fail_safe_events = out->complete.fail_safe_events();
  return rec;
}

}  // namespace

bool IsLoopbackTarget(const std::string& target) {
  // gRPC target forms: "dns:///host:port", "ipv4:h1:p1,h2:p2" (every address must be loopback).
  std::string rest = target;
  if (absl::StartsWith(rest, "dns:///")) rest = rest.substr(7);
  if (absl::StartsWith(rest, "ipv4:") || absl::StartsWith(rest, "ipv6:")) {
    rest = rest.substr(5);
    if (rest.empty()) return false;
    for (absl::string_view one : absl::StrSplit(rest, ','))
      if (!IsLoopbackTarget(std::string(one))) return false;
    return true;
  }
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos) return false;
  const std::string host = rest.substr(0, colon);
  return host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.");
}

absl::Status ValidateSpec(const LoadSpec& s) {
  if (!IsLoopbackTarget(s.target)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target '", s.target, "' is not a loopback address (127.0.0.0/8, localhost, [::1])"));
  }
  if (s.mode != "closed" && s.mode != "open")
    return absl::InvalidArgumentError("mode must be closed or open");
  if (s.mode == "closed" && (s.concurrency < 1 || s.concurrency > 1024)) {
    return absl::InvalidArgumentError("concurrency must be in [1, 1024]");
  }
  if (s.mode == "open" && !(s.rate > 0 && s.rate <= 10000))
    return absl::InvalidArgumentError("rate must be in (0, 10000]");
  if (s.requests < 1 || s.requests > 1000000)
    return absl::InvalidArgumentError("requests must be in [1, 1000000]");
  if (!(s.max_seconds > 0 && s.max_seconds <= 86400))
    return absl::InvalidArgumentError("max_seconds must be in (0, 86400]");
  if (s.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens must be >= 1");
  return absl::OkStatus();
}

absl::StatusOr<LoadResult> RunLoad(const LoadSpec& spec, const std::vector<PromptItem>& prompts,
                                   const std::function<void(int, int)>& progress) {
  if (auto s = ValidateSpec(spec); !s.ok()) return s;
  if (prompts.empty()) return absl::InvalidArgumentError("no prompts");
  LoadResult result;
  result.spec = spec;
  auto channel = client::OpenChannel(spec.target, spec.channel);
  if (!channel.ok()) return channel.status();
  client::GenerationClient client(*channel, spec.target, spec.channel.auth_token);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(spec.max_seconds));
  // No new request after `deadline`; requests in flight are cut at `hard_deadline`.
  const auto hard_deadline = deadline + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(spec.drain_seconds));
  std::mutex mu;
  std::atomic<int> next{0}, done{0};
  auto record = [&](RequestRecord rec) {
    std::lock_guard<std::mutex> lock(mu);
    result.records.push_back(std::move(rec));
    if (progress) progress(++done, spec.requests);
  };
  std::vector<std::thread> threads;
  if (spec.mode == "closed") {
    for (int w = 0; w < spec.concurrency; ++w) {
      threads.emplace_back([&] {
        for (int i = next++; i < spec.requests && Clock::now() < deadline; i = next++) {
          record(
              Call(client, spec, prompts[i % prompts.size()], spec.seed + i, start, hard_deadline));
        }
      });
    }
  } else {
    std::mt19937_64 rng(spec.seed);
    std::exponential_distribution<double> gap(spec.rate);
    auto t = start;
    for (int i = 0; i < spec.requests; ++i) {
      t += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
      if (t >= deadline) break;
      std::this_thread::sleep_until(t);
      threads.emplace_back([&, i] {
        record(
            Call(client, spec, prompts[i % prompts.size()], spec.seed + i, start, hard_deadline));
      });
    }
  }
  for (auto& th : threads) th.join();
  result.duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace kvguard::loadtest
