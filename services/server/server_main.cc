// kvguard-server: the streaming generation service.
//
//   build/bin/kvguard-server --model models/stories260K/stories260K.bin
//       --listen 127.0.0.1:50051 [--guard 127.0.0.1:50052] [--metrics_listen 127.0.0.1:9091]
//
// flags -> load model -> RunServer -> wait for SIGTERM/SIGINT -> drain.
#include <ATen/Parallel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
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
#include "services/engine/checkpoint.h"
#include "services/engine/kv_layer_store.h"
#include "services/engine/llama_model.h"
#include "services/engine/tokenizer.h"
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
ABSL_FLAG(int, threads, 0, "CPU intra-op threads (0 = libtorch default)");
ABSL_FLAG(int, drain_grace_ms, 10000, "on SIGTERM: time in-flight streams get to finish");
ABSL_FLAG(bool, research_logits, false, "stream full logits to the guard (research mode)");
ABSL_FLAG(
    int, guard_probe_tokens, 16,
    "guarded requests: hold the first N tokens back so the guard can restart a request at a lower "
    "ratio when prefill compression damaged it (admission); 0 = stream at once");

namespace {

sem_t g_shutdown;
void OnSignal(int) { sem_post(&g_shutdown); }

int Fail(const std::string& message) {
  std::cerr << "kvguard-server: " << message << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("kvguard-server --model PATH [--listen ADDR] [--guard ADDR] ...");
  // --help lists this binary's flags (absl matches only files named after the program).
  absl::SetFlagsUsageConfig({.contains_help_flags = [](absl::string_view) { return true; }});
  absl::ParseCommandLine(argc, argv);
  using namespace kvguard;
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (model_path.empty()) return Fail("--model is required");
  const std::string fail_safe = absl::GetFlag(FLAGS_fail_safe);
  if (fail_safe != "hold" && fail_safe != "safe") return Fail("--fail_safe must be hold or safe");
  if (absl::GetFlag(FLAGS_guard_lag) != 0 && absl::GetFlag(FLAGS_guard_lag) != 1)
    return Fail("--guard_lag must be 0 or 1");
  if (absl::GetFlag(FLAGS_threads) > 0) {
    at::set_num_threads(absl::GetFlag(FLAGS_threads));
    SetBlasThreads(absl::GetFlag(FLAGS_threads));
  }

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
  auto model = engine::LlamaModel::Load(std::move(*ckpt), {.device = absl::GetFlag(FLAGS_device),
                                                           .dtype = absl::GetFlag(FLAGS_dtype)});
  if (!model.ok()) return Fail(std::string(model.status().message()));
  std::string blas_text;
  if ((*model)->device().is_cpu()) {
    const BlasInfo blas = DescribeBlas();
    blas_text = absl::StrCat(blas.name, blas.detail.empty() ? "" : " " + blas.detail,
                             blas.path.empty() ? "" : " (" + blas.path + ")");
  }

  std::unique_ptr<server::GrpcGuardLink> guard;
  if (!absl::GetFlag(FLAGS_guard).empty()) {
    guard = std::make_unique<server::GrpcGuardLink>(absl::GetFlag(FLAGS_guard));
    // Serve once the guard stream is open (or after --guard_connect_wait_ms): a guarded request
    // that arrived first would otherwise run its first steps fail-safe. A guard that is down
    // only delays startup by that much; the link keeps reconnecting in the background.
    const auto until = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(absl::GetFlag(FLAGS_guard_connect_wait_ms));
    while (!guard->connected() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!guard->connected())
      std::cout << "kvguard-server: guard " << absl::GetFlag(FLAGS_guard)
                << " not reachable yet; guarded requests run fail-safe until it is" << std::endl;
  }

  server::SchedulerOptions so;
  so.max_concurrent = absl::GetFlag(FLAGS_max_concurrent);
  so.max_queue = absl::GetFlag(FLAGS_max_queue);
  so.guard_deadline = std::chrono::milliseconds(absl::GetFlag(FLAGS_guard_deadline_ms));
  so.guard_lag = absl::GetFlag(FLAGS_guard_lag);
  so.fail_safe =
      fail_safe == "hold" ? server::FailSafePolicy::kHold : server::FailSafePolicy::kSafe;
  so.r_safe = absl::GetFlag(FLAGS_r_safe);
  so.research_logits = absl::GetFlag(FLAGS_research_logits);
  so.guard_probe_tokens = std::max(0, absl::GetFlag(FLAGS_guard_probe_tokens));
  if (const int64_t pool_bytes = absl::GetFlag(FLAGS_kv_cache_bytes); pool_bytes > 0) {
    const engine::KvCacheOptions cache = (*model)->CacheOptions();
    auto arena = engine::NewKvArena({.kv_heads = cache.num_kv_heads,
                                     .head_dim = cache.head_dim,
                                     .dtype = cache.dtype,
                                     .device = cache.device},
                                    pool_bytes, absl::GetFlag(FLAGS_kv_block_tokens));
    if (!arena.ok()) return Fail(std::string(arena.status().message()));
    so.kv_arena = std::move(*arena);
  }
  server::Scheduler scheduler(**model, tokenizer.get(), so, guard.get(), &metrics);

  server::ServerDefaults defaults{
      .compressor = absl::GetFlag(FLAGS_default_compressor),
      .ratio = absl::GetFlag(FLAGS_default_ratio),
      .compress_every = std::max(0, absl::GetFlag(FLAGS_default_compress_every)),
      .guard_available = guard != nullptr};
  server::GenerationServiceImpl service(scheduler, (*model)->config(), tokenizer.get(), defaults,
                                        {.model_path = model_path,
                                         .device = absl::GetFlag(FLAGS_device),
                                         .dtype = engine::DtypeName((*model)->dtype()),
                                         .blas = blas_text},
                                        &metrics);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return Fail("cannot listen on " + absl::GetFlag(FLAGS_listen));
  server->GetHealthCheckService()->SetServingStatus(true);
  const std::string host =
      absl::GetFlag(FLAGS_listen).substr(0, absl::GetFlag(FLAGS_listen).rfind(':'));
  std::cout << "kvguard-server listening on " << host << ":" << port << " (metrics "
            << (metrics_addr.empty() ? "off" : metrics_addr) << ", guard "
            << (guard ? absl::GetFlag(FLAGS_guard) : "none") << ", " << (*model)->device().str()
            << " " << engine::DtypeName((*model)->dtype())
            << (blas_text.empty() ? "" : ", BLAS " + blas_text) << ", KV pool "
            << (so.kv_arena ? absl::StrCat(so.kv_arena->pool->total_bytes(), " bytes in ",
                                           so.kv_arena->pool->total_blocks(), " blocks")
                            : std::string("off"))
            << ")" << std::endl;

  sem_init(&g_shutdown, 0, 0);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  while (sem_wait(&g_shutdown) != 0) {
  }
  // Drain: report NOT_SERVING, refuse new work, let in-flight streams finish
  // within the grace period, then cancel the rest.
  std::cout << "kvguard-server: draining" << std::endl;
  server->GetHealthCheckService()->SetServingStatus(false);
  const auto grace = std::chrono::milliseconds(absl::GetFlag(FLAGS_drain_grace_ms));
  scheduler.Drain(grace);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  std::cout << "kvguard-server: stopped" << std::endl;
  return 0;
}
