// What a rollout does to real processes: the guard outlives the server's
// drain (its streams stay guarded to the end), a draining server sends
// GOAWAY at once so round_robin clients move their next calls to another
// replica, round_robin spreads calls over replicas, and max_connection_age
// recycles connections without breaking a stream.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <functional>
#include <future>
#include <iostream>
#include <set>
#include <thread>

#include "services/client/generation_client.h"
#include "tests/integration/process.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard {
namespace {

using client::GenerationClient;
using testing::ChildProcess;
using Clock = std::chrono::steady_clock;

struct Proc {
  std::unique_ptr<ChildProcess> process;
  std::string address;
  int port = 0;
};

Proc Start(const std::string& binary, std::vector<std::string> extra) {
  Proc s;
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--metrics_listen", ""};
  if (binary == "kvguard-server")
    args.insert(args.end(), {"--model", testing::ModelsPath("stories260K/stories260K.bin")});
  args.insert(args.end(), extra.begin(), extra.end());
  s.process = std::make_unique<ChildProcess>(std::string(KVG_BIN_DIR) + "/" + binary, args);
  auto port = s.process->WaitFor("listening on 127\\.0\\.0\\.1:([0-9]+)", std::chrono::seconds(30));
  EXPECT_TRUE(port.has_value()) << s.process->output();
  s.port = std::stoi(port.value_or("0"));
  s.address = "127.0.0.1:" + port.value_or("0");
  return s;
}

v1::GenerateRequest Request(int max_new, bool guarded = false) {
  v1::GenerateRequest r;
  r.mutable_token_ids()->add_ids(1);
  r.mutable_stopping()->set_max_new_tokens(max_new);
  r.mutable_stopping()->set_ignore_eos(true);
  if (guarded) r.mutable_compression()->mutable_guard()->set_value(true);
  return r;
}

// Counts streams that have delivered their first chunk: SIGTERM comes only
// once every stream is running (a drain's GOAWAY refuses calls not yet started).
struct Started {
  std::atomic<int> n{0};
  std::function<void(const v1::TokenChunk&)> Counter() {
    auto first = std::make_shared<bool>(true);
    return [this, first](const v1::TokenChunk&) {
      if (*first) ++n;
      *first = false;
    };
  }
  bool WaitFor(int count) {
    for (int i = 0; i < 3000 && n.load() < count; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return n.load() >= count;
  }
};

// Exit codes and exit times of two processes, polled together.
struct Exits {
  int first_code = -2, second_code = -2;
  Clock::time_point first_at{}, second_at{};
  Clock::time_point streams_done_at{};
};
Exits WaitBoth(ChildProcess& a, ChildProcess& b, std::chrono::seconds limit) {
  Exits e;
  const auto end = Clock::now() + limit;
  while (Clock::now() < end && (e.first_code == -2 || e.second_code == -2)) {
    if (e.first_code == -2) {
      const int c = a.Wait(std::chrono::milliseconds(10));
      if (c != -1) e.first_code = c, e.first_at = Clock::now();
    }
    if (e.second_code == -2) {
      const int c = b.Wait(std::chrono::milliseconds(10));
      if (c != -1) e.second_code = c, e.second_at = Clock::now();
    }
  }
  return e;
}

// SIGTERM reaches server and guard together (as when a pod is deleted and
// both lack a preStop); `guard_drain_ms` is the guard's --drain_wait_ms.
// Returns the fail-safe events of 32 guarded streams in flight (seconds of
// work: longer than the 1 s a guard gives open streams once it stops).
constexpr int kStreams = 32;
uint32_t TerminateStackMidStream(int guard_drain_ms, Exits* exits) {
  Proc guard = Start("kvguard-guard", {"--model", "none", "--config", "none", "--drain_wait_ms",
                                       std::to_string(guard_drain_ms)});
  // One thread and 32 streams: the engine's CPU loops finish eight streams on
  // two threads inside the guard's 1 s, which would leave nothing to contrast
  // (16 streams here end ~2-3 s after SIGTERM; 32 leave a faster machine room).
  // Holding the server with SIGSTOP instead made its drain reset connections.
  Proc server = Start("kvguard-server",
                      {"--guard", guard.address, "--guard_deadline_ms", "500", "--drain_grace_ms",
                       "30000", "--threads", "1", "--max_concurrent", std::to_string(kStreams)});
  std::vector<std::future<absl::StatusOr<client::GenerateOutcome>>> calls;
  Started started;
  for (int i = 0; i < kStreams; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      return GenerationClient(server.address)
          .Generate(Request(500, /*guarded=*/true), started.Counter());
    }));
  }
  EXPECT_TRUE(started.WaitFor(kStreams));
  const auto terminated_at = Clock::now();
  server.process->Signal(SIGTERM);
  guard.process->Signal(SIGTERM);
  uint32_t fail_safe = 0;
  for (auto& f : calls) {
    auto out = f.get();
    // A drain never fails a stream.
    EXPECT_TRUE(out.ok()) << out.status() << "\nserver:\n"
                          << server.process->output() << "\nguard:\n"
                          << guard.process->output();
    if (!out.ok()) continue;
    EXPECT_EQ(out->token_ids.size(), 500u);
    fail_safe += out->complete.fail_safe_events();
  }
  exits->streams_done_at = Clock::now();
  std::cout << "guard drain " << guard_drain_ms << " ms: streams ended "
            << std::chrono::duration<double>(exits->streams_done_at - terminated_at).count()
            << " s after SIGTERM, " << fail_safe << " fail-safe steps" << std::endl;
  const Exits e = WaitBoth(*server.process, *guard.process, std::chrono::seconds(40));
  exits->first_code = e.first_code, exits->second_code = e.second_code;
  exits->first_at = e.first_at, exits->second_at = e.second_at;
  return fail_safe;
}

TEST(RolloutTest, GuardOutlivesTheServersDrain) {
  Exits e;
  EXPECT_EQ(TerminateStackMidStream(20000, &e), 0u);  // every step of every stream guarded
  EXPECT_EQ(e.first_code, 0);
  EXPECT_EQ(e.second_code, 0);
  EXPECT_GE(e.second_at, e.streams_done_at) << "the guard exited before the server's streams ended";
  // ... and follows the server out once its link closes, not after its own drain limit.
  EXPECT_LT(e.second_at - e.streams_done_at, std::chrono::seconds(5)) << "the guard lingered";
  // The old behaviour, for contrast: a guard that stops at once leaves the streams fail-safe.
  EXPECT_GT(TerminateStackMidStream(0, &e), 0u);
}

TEST(RolloutTest, RoundRobinSpreadsCallsOverReplicas) {
  Proc a = Start("kvguard-server", {"--default_compressor", "knorm", "--default_ratio", "0.25"});
  Proc b = Start("kvguard-server", {"--default_compressor", "knorm", "--default_ratio", "0.5"});
  const std::string both = "ipv4:" + a.address + "," + b.address;
  for (const std::string policy : {"round_robin", "pick_first"}) {
    auto channel = client::OpenChannel(both, {.lb_policy = policy});
    ASSERT_TRUE(channel.ok()) << channel.status();
    GenerationClient c(*channel, both, "");
    std::set<double> seen;
    // round_robin picks among connected replicas: the second may connect a moment after the
    // first (longer on a loaded machine: the suite's parallel run once saw 40 quick calls all
    // reach one), so calls are spaced over up to 5 s; pick_first must see one replica in all.
    for (int i = 0; i < 500 && seen.size() < 2; ++i) {
      auto info = c.GetModelInfo();
      ASSERT_TRUE(info.ok()) << info.status();
      seen.insert(info->default_ratio());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(seen.size(), policy == "round_robin" ? 2u : 1u) << policy;
  }
  EXPECT_EQ(client::OpenChannel(both, {.lb_policy = "random"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RolloutTest, DrainSendsGoawayAtOnceAndClientsMoveToAnotherReplica) {
  // 24 streams of 500 tokens on one thread keep A busy for seconds: its last stream ended
  // ~3.8 s after the new calls (8 streams on two threads once took ~2.5 s in all, but the
  // CPU decode loops finish them before the new calls are made).
  Proc a = Start("kvguard-server",
                 {"--drain_grace_ms", "30000", "--threads", "1", "--max_concurrent", "32"});
  Proc b = Start("kvguard-server", {});
  std::vector<std::future<std::pair<absl::StatusOr<client::GenerateOutcome>, Clock::time_point>>>
      in_flight;
  Started started;
  for (int i = 0; i < 24; ++i) {
    in_flight.push_back(std::async(std::launch::async, [&] {
      auto out = GenerationClient(a.address).Generate(Request(500), started.Counter());
      return std::pair{std::move(out), Clock::now()};
    }));
  }
  ASSERT_TRUE(started.WaitFor(24));
  const std::string both = "ipv4:" + a.address + "," + b.address;
  GenerationClient rr(*client::OpenChannel(both, {.lb_policy = "round_robin"}), both, "");
  ASSERT_TRUE(rr.GetModelInfo().ok());
  a.process->Signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // A is still streaming, but new calls are no longer its: every one lands on B.
  GenerationClient direct(a.address);
  auto refused =
      direct.Generate(Request(2), nullptr, {.connect_timeout = std::chrono::milliseconds(500)});
  // Refused without running: UNAVAILABLE, or CANCELLED when the call reached the server as its
  // shutdown began (seen under TSan's slowdown).
  EXPECT_TRUE(refused.status().code() == absl::StatusCode::kUnavailable ||
              refused.status().code() == absl::StatusCode::kCancelled)
      << refused.status();
  for (int i = 0; i < 6; ++i) {
    auto out = rr.Generate(Request(4));
    EXPECT_TRUE(out.ok()) << i << ": " << out.status();
  }
  const auto moved_at = Clock::now();
  bool drained_later = false;
  for (auto& f : in_flight) {
    auto [out, at] = f.get();
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->token_ids.size(), 500u);
    drained_later |= at > moved_at;
  }
  EXPECT_TRUE(drained_later) << "A finished its streams before the calls were made: no evidence";
  EXPECT_EQ(a.process->Wait(std::chrono::seconds(30)), 0);
}

TEST(RolloutTest, MaxConnectionAgeNeverBreaksAStream) {
  Proc s = Start("kvguard-server", {"--max_connection_age_ms", "200"});
  GenerationClient c(s.address);
  auto long_stream = std::async(std::launch::async, [&] { return c.Generate(Request(500)); });
  // Six calls 100 ms apart span three connection ages: each may land on a fresh connection.
  for (int i = 0; i < 6; ++i) {
    auto out = c.Generate(Request(2));
    EXPECT_TRUE(out.ok()) << out.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto done = long_stream.get();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->token_ids.size(), 500u);
}

}  // namespace
}  // namespace kvguard
