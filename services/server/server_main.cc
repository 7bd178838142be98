// kvguard-server: the streaming generation service.
//
//   build/bin/kvguard-server --model models/stories260K/stories260K.bin
//       --listen 127.0.0.1:50051 [--guard 127.0.0.1:50052] [--metrics_listen 127.0.0.1:9091]
//
// flags -> plugins -> load model -> guard link -> scheduler -> serve (TLS,
// auth, limits) -> SIGTERM/SIGINT -> drain: NOT_SERVING and GOAWAY at once
// (clients move to other replicas), in-flight streams finish within
// --drain_grace_ms, then the rest are cancelled.
#include <ATen/Parallel.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <semaphore.h>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/grpc_serve.h"
#include "common/grpc_tls.h"
#include "common/heap.h"
#include "compressors/plugin_loader.h"
#include "services/engine/checkpoint.h"
#include "services/engine/kv_layer_store.h"
#include "services/engine/llama_model.h"
#include "services/engine/tokenizer.h"
#include "services/server/access_control.h"
#include "services/server/generation_service.h"
#include "services/server/grpc_guard_link.h"
#include "services/server/metrics.h"
#include "services/server/scheduler.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory or llama2.c .bin file (required)");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC listen address (port 0 picks a free one)");
ABSL_FLAG(std::string, guard, "", "guard sidecar address; empty = run unguarded");
ABSL_FLAG(int, guard_deadline_ms, 50, "how long a decode step waits for the guard's directives");
ABSL_FLAG(int, guard_connect_wait_ms, 5000,
          "at startup, wait up to this long for the guard stream before serving");
ABSL_FLAG(int, guard_lag, 0, "0 = apply step t's directive before step t+1; 1 = one step later");
ABSL_FLAG(bool, guard_overlap, true,
          "at lag 0, wait for the guard's answer after the next forward instead of before it (the "
          "round trip runs beside the forward; what streams is what strict streams, a restart or "
          "RECOVERY redoing that sequence's step); false = wait before it; no effect at lag 1");
ABSL_FLAG(int, guard_interval, 1,
          "exchange with the guard every N steps (N reports a session per batch; every step "
          "during the probe); directives arrive up to N - 1 steps later");
ABSL_FLAG(std::string, fail_safe, "safe", "on a missed guard deadline or lost stream: hold | safe");
ABSL_FLAG(double, r_safe, 0.0, "compression ratio in SAFE mode under the fail-safe policy");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9091",
          "Prometheus /metrics address; empty = off");
ABSL_FLAG(int, max_concurrent, 16,
          "most sequences decoded together (an upper bound; with --kv_cache_bytes the KV pool "
          "decides admission)");
ABSL_FLAG(int64_t, kv_cache_bytes, 0,
          "the KV pool: bytes every sequence's KV comes from; requests are admitted by the "
          "blocks their prompt and their ratio need, and preempted when it runs short; "
          "0 = no pool");
ABSL_FLAG(int, kv_block_tokens, 16, "tokens of one layer per KV pool block");
ABSL_FLAG(int, max_queue, 64, "requests waiting beyond that; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, default_compressor, "", "compressor for requests that name none");
ABSL_FLAG(double, default_ratio, 0.0, "ratio for requests that give none");
ABSL_FLAG(int, default_compress_every, 0,
          "requests with compress_every 0 evict in chunks every N decode steps (16 makes "
          "compression cheaper than none at batch 16: reports/bench/compressors_batch16.md); "
          "0 or 1 = every step");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda | cuda:N");
ABSL_FLAG(std::string, dtype, "auto",
          "auto (the checkpoint's own: bf16 stays bf16) | f32 | bf16 | f16");
ABSL_FLAG(std::string, weights, "native",
          "native (weights in the compute dtype) | int8 (per-channel int8 weights, CPU; "
          "reports/bench/engine.md has its speed and logit error)");
ABSL_FLAG(int, threads, 0, "CPU intra-op threads (0 = libtorch default)");
ABSL_FLAG(int, drain_grace_ms, 10000, "on SIGTERM: time in-flight streams get to finish");
ABSL_FLAG(bool, research_logits, false, "stream full logits to the guard (research mode)");
ABSL_FLAG(
    int, guard_probe_tokens, 16,
    "guarded requests: hold the first N tokens back so the guard can restart a request at a lower "
    "ratio when prefill compression damaged it (admission); 0 = stream at once");

ABSL_FLAG(std::string, tls_cert_file, "", "PEM certificate chain: serve Generate over TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM roots: require client certificates signed by them (mutual TLS)");
ABSL_FLAG(int, tls_reload_s, 10, "how often TLS files are re-read (rotation without restart)");
ABSL_FLAG(std::string, guard_tls_ca_file, "", "PEM roots that verify the guard (TLS to the guard)");
ABSL_FLAG(std::string, guard_tls_cert_file, "", "client certificate for the guard (mutual TLS)");
ABSL_FLAG(std::string, guard_tls_key_file, "", "private key of --guard_tls_cert_file");
ABSL_FLAG(std::string, guard_tls_server_name, "", "name expected in the guard's certificate");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens, one \"NAME TOKEN\" per line, re-read on change; empty = no auth");
ABSL_FLAG(int, max_streams_per_client, 0,
          "open Generate streams one client (token name, mTLS name or IP) may hold; 0 = no limit");
ABSL_FLAG(int64_t, max_prompt_tokens, 0, "longest prompt accepted; 0 = the model's context");
ABSL_FLAG(int64_t, max_new_tokens, 0, "largest stopping.max_new_tokens accepted; 0 = 2^20");
ABSL_FLAG(int, max_request_bytes, 4 << 20, "largest request message (gRPC RESOURCE_EXHAUSTED)");
ABSL_FLAG(int, max_connection_age_ms, 300000,
          "close client connections (GOAWAY) after this long so clients rebalance; 0 = never");
ABSL_FLAG(bool, enable_reflection, false, "serve gRPC server reflection");
ABSL_FLAG(std::string, plugin_dir, "", "the only directory compressor plugins load from");
ABSL_FLAG(std::vector<std::string>, plugins, {},
          "compressor plugins to load (file names in --plugin_dir), comma separated");

namespace {

using namespace kvguard;  // NOLINT: a binary's main file

sem_t g_shutdown;
void OnSignal(int) { sem_post(&g_shutdown); }

int Fail(const std::string& message) {
  std::cerr << "kvguard-server: " << message << "\n";
  return 1;
}

absl::Status LoadPlugins() {
  for (const std::string& name : absl::GetFlag(FLAGS_plugins)) {
    absl::Status st = compress::LoadCompressorPluginFromDir(absl::GetFlag(FLAGS_plugin_dir), name,
                                                            compress::Registry::Global());
    if (!st.ok()) return st;
    std::cout << "kvguard-server: loaded compressor plugin " << name << std::endl;
  }
  return absl::OkStatus();
}

// The guard link, once its stream is open (or after --guard_connect_wait_ms):
// a guarded request that arrived first would otherwise run its first steps
// fail-safe. A guard that is down only delays startup by that much; the link
// keeps reconnecting in the background.
absl::StatusOr<std::unique_ptr<server::GrpcGuardLink>> ConnectGuard() {
  const std::string address = absl::GetFlag(FLAGS_guard);
  if (address.empty()) return nullptr;
  grpc::ChannelArguments args;
  auto credentials =
      MakeChannelCredentials({.cert_file = absl::GetFlag(FLAGS_guard_tls_cert_file),
                              .key_file = absl::GetFlag(FLAGS_guard_tls_key_file),
                              .ca_file = absl::GetFlag(FLAGS_guard_tls_ca_file),
                              .server_name = absl::GetFlag(FLAGS_guard_tls_server_name),
                              .reload_s = absl::GetFlag(FLAGS_tls_reload_s)},
                             args);
  if (!credentials.ok()) return credentials.status();
  auto guard = std::make_unique<server::GrpcGuardLink>(address, *credentials, std::move(args));
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(absl::GetFlag(FLAGS_guard_connect_wait_ms));
  while (!guard->connected() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!guard->connected())
    std::cout << "kvguard-server: guard " << address
              << " not reachable yet; guarded requests run fail-safe until it is" << std::endl;
  return guard;
}

absl::StatusOr<server::SchedulerOptions> MakeSchedulerOptions(const engine::LlamaModel& model) {
  server::SchedulerOptions so;
  so.max_concurrent = absl::GetFlag(FLAGS_max_concurrent);
  so.max_queue = absl::GetFlag(FLAGS_max_queue);
  so.guard_deadline = std::chrono::milliseconds(absl::GetFlag(FLAGS_guard_deadline_ms));
  so.guard_lag = absl::GetFlag(FLAGS_guard_lag);
  so.guard_interval = absl::GetFlag(FLAGS_guard_interval);
  so.guard_overlap = absl::GetFlag(FLAGS_guard_overlap);
  so.fail_safe = absl::GetFlag(FLAGS_fail_safe) == "hold" ? server::FailSafePolicy::kHold
                                                          : server::FailSafePolicy::kSafe;
  so.r_safe = absl::GetFlag(FLAGS_r_safe);
  so.research_logits = absl::GetFlag(FLAGS_research_logits);
  so.guard_probe_tokens = std::max(0, absl::GetFlag(FLAGS_guard_probe_tokens));
  if (const int64_t pool_bytes = absl::GetFlag(FLAGS_kv_cache_bytes); pool_bytes > 0) {
    const engine::KvCacheOptions cache = model.CacheOptions();
    auto arena = engine::NewKvArena({.kv_heads = cache.num_kv_heads,
                                     .head_dim = cache.head_dim,
                                     .dtype = cache.dtype,
                                     .device = cache.device},
                                    pool_bytes, absl::GetFlag(FLAGS_kv_block_tokens));
    if (!arena.ok()) return arena.status();
    so.kv_arena = std::move(*arena);
  }
  return so;
}

// Who may call, and how many streams each caller may hold.
struct Access {
  std::unique_ptr<server::TokenAuthenticator> auth;
  std::unique_ptr<server::StreamQuota> quota;
};

absl::StatusOr<Access> MakeAccess() {
  Access access;
  if (const std::string path = absl::GetFlag(FLAGS_auth_tokens_file); !path.empty()) {
    auto auth = server::TokenAuthenticator::Load(path);
    if (!auth.ok()) return auth.status();
    access.auth = std::move(*auth);
  }
  access.quota = std::make_unique<server::StreamQuota>(absl::GetFlag(FLAGS_max_streams_per_client));
  return access;
}

// Listens on --listen with the TLS, size and connection-age settings; the
// bound port (port 0 picks one) is written to *port.
absl::StatusOr<std::unique_ptr<grpc::Server>> Listen(grpc::Service& service, int* port) {
  auto server = StartGrpcServer(
      service,
      {.listen = absl::GetFlag(FLAGS_listen),
       .tls = {.cert_file = absl::GetFlag(FLAGS_tls_cert_file),
               .key_file = absl::GetFlag(FLAGS_tls_key_file),
               .ca_file = absl::GetFlag(FLAGS_tls_client_ca_file),
               .reload_s = absl::GetFlag(FLAGS_tls_reload_s)},
       .reflection = absl::GetFlag(FLAGS_enable_reflection),
       .configure =
           [](grpc::ServerBuilder& builder) {
             builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_request_bytes));
             // Streams open when the age is reached finish on the old connection (no grace limit).
             if (const int age = absl::GetFlag(FLAGS_max_connection_age_ms); age > 0)
               builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, age);
           }},
      port);
  if (server.ok()) (*server)->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

// SIGTERM: NOT_SERVING for the probes, and Shutdown at once, which sends
// GOAWAY so clients open their next streams elsewhere while the streams in
// flight finish here; those get --drain_grace_ms, then are cancelled. Exit
// waits (up to 2 s) for the clients to hang up, so no stream's last frames
// are lost to the reset a close with unread frames sends.
void Drain(grpc::Server& server, int port, server::Scheduler& scheduler) {
  std::cout << "kvguard-server: draining" << std::endl;
  server.GetHealthCheckService()->SetServingStatus(false);
  const auto grace = std::chrono::milliseconds(absl::GetFlag(FLAGS_drain_grace_ms));
  std::thread goaway([&server, grace] {
    server.Shutdown(std::chrono::system_clock::now() + grace + std::chrono::seconds(2));
  });
  scheduler.Drain(grace);
  goaway.join();
  const int open =
      WaitForClientsToHangUp(port, std::chrono::steady_clock::now() + std::chrono::seconds(2));
  if (open > 0)
    std::cout << "kvguard-server: " << open << " client connection(s) still open" << std::endl;
}

std::string Describe(const std::string& listen, int port, const std::string& metrics_addr,
                     const server::GrpcGuardLink* guard, const engine::LlamaModel& model,
                     const std::string& blas_text, const server::SchedulerOptions& so) {
  const bool tls = !absl::GetFlag(FLAGS_tls_cert_file).empty();
  return absl::StrCat(
      "kvguard-server listening on ", listen.substr(0, listen.rfind(':')), ":", port, " (metrics ",
      metrics_addr.empty() ? "off" : metrics_addr, ", ",
      tls ? (absl::GetFlag(FLAGS_tls_client_ca_file).empty() ? "TLS" : "mTLS") : "plaintext",
      absl::GetFlag(FLAGS_auth_tokens_file).empty() ? "" : " + bearer tokens", ", guard ",
      guard ? absl::GetFlag(FLAGS_guard) : "none", ", ", model.device().str(), " ",
      engine::DtypeName(model.dtype()), blas_text.empty() ? "" : ", BLAS " + blas_text,
      ", KV pool ",
      so.kv_arena ? absl::StrCat(so.kv_arena->pool->total_bytes(), " bytes in ",
                                 so.kv_arena->pool->total_blocks(), " blocks")
                  : std::string("off"),
      ")");
}

}  // namespace

int main(int argc, char** argv) {
  kvguard::KeepFreedBlocksInHeap();
  absl::SetProgramUsageMessage("kvguard-server --model PATH [--listen ADDR] [--guard ADDR] ...");
  // --help lists this binary's flags (absl matches only files named after the program).
  absl::SetFlagsUsageConfig({.contains_help_flags = [](absl::string_view) { return true; }});
  absl::ParseCommandLine(argc, argv);
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (model_path.empty()) return Fail("--model is required");
  const std::string fail_safe = absl::GetFlag(FLAGS_fail_safe);
  if (fail_safe != "hold" && fail_safe != "safe") return Fail("--fail_safe must be hold or safe");
  if (absl::GetFlag(FLAGS_guard_lag) != 0 && absl::GetFlag(FLAGS_guard_lag) != 1)
    return Fail("--guard_lag must be 0 or 1");
  if (absl::GetFlag(FLAGS_guard_interval) < 1 || absl::GetFlag(FLAGS_guard_interval) > 64)
    return Fail("--guard_interval must be 1..64");
  if (absl::GetFlag(FLAGS_threads) > 0) {
    at::set_num_threads(absl::GetFlag(FLAGS_threads));
    SetBlasThreads(absl::GetFlag(FLAGS_threads));
  }
  if (absl::Status st = LoadPlugins(); !st.ok()) return Fail(std::string(st.message()));
  auto access = MakeAccess();
  if (!access.ok()) return Fail(std::string(access.status().message()));

  // The metrics endpoint starts first: a bad address fails before the model loads.
  server::ServerMetrics metrics;
  const std::string metrics_addr = absl::GetFlag(FLAGS_metrics_listen);
  if (!metrics_addr.empty() && !metrics.Serve(metrics_addr))
    return Fail("cannot serve metrics on " + metrics_addr);
  auto ckpt = engine::OpenCheckpoint(model_path);
  if (!ckpt.ok()) return Fail(std::string(ckpt.status().message()));
  std::unique_ptr<engine::Tokenizer> tokenizer;
  if (!ckpt->tokenizer_path.empty()) {
    auto t = engine::Tokenizer::Load(ckpt->tokenizer_path);
    if (!t.ok()) return Fail(std::string(t.status().message()));
    tokenizer = std::move(*t);
  }
  auto model =
      engine::LlamaModel::Load(std::move(*ckpt), {.device = absl::GetFlag(FLAGS_device),
                                                  .dtype = absl::GetFlag(FLAGS_dtype),
                                                  .weights = absl::GetFlag(FLAGS_weights)});
  if (!model.ok()) return Fail(std::string(model.status().message()));
  std::string blas_text;
  if ((*model)->device().is_cpu()) {
    const BlasInfo blas = DescribeBlas();
    blas_text = absl::StrCat(blas.name, blas.detail.empty() ? "" : " " + blas.detail,
                             blas.path.empty() ? "" : " (" + blas.path + ")");
  }

  auto guard = ConnectGuard();
  if (!guard.ok()) return Fail(std::string(guard.status().message()));
  auto so = MakeSchedulerOptions(**model);
  if (!so.ok()) return Fail(std::string(so.status().message()));
  server::Scheduler scheduler(**model, tokenizer.get(), *so, guard->get(), &metrics);

  server::ServerDefaults defaults{
      .compressor = absl::GetFlag(FLAGS_default_compressor),
      .ratio = absl::GetFlag(FLAGS_default_ratio),
      .compress_every = std::max(0, absl::GetFlag(FLAGS_default_compress_every)),
      .guard_available = *guard != nullptr,
      .max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens),
      .max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens)};
  server::GenerationServiceImpl service(scheduler, (*model)->config(), tokenizer.get(), defaults,
                                        {.model_path = model_path,
                                         .device = absl::GetFlag(FLAGS_device),
                                         .dtype = engine::DtypeName((*model)->dtype()),
                                         .blas = blas_text},
                                        &metrics, {access->auth.get(), access->quota.get()});
  int port = 0;
  auto server = Listen(service, &port);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::cout << Describe(absl::GetFlag(FLAGS_listen), port, metrics_addr, guard->get(), **model,
                        blas_text, *so)
            << std::endl;

  sem_init(&g_shutdown, 0, 0);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  while (sem_wait(&g_shutdown) != 0) {
  }
  Drain(**server, port, scheduler);
  std::cout << "kvguard-server: stopped" << std::endl;
  return 0;
}
