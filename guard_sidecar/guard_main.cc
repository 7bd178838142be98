// kvguard-guard: the guard sidecar (GuardService over gRPC).
//
//   build/bin/kvguard-guard [--listen 127.0.0.1:50052] [--model hazard.json]
//       [--config guard_sidecar/config/controller.json] [--metrics_listen 127.0.0.1:9092]
//
// flags -> config -> hazard model (or the fallback rule) -> metrics -> serve
// (health SERVING once the model is loaded; TLS/mTLS from watched files) ->
// SIGTERM/SIGINT -> NOT_SERVING, keep answering the open streams until the
// server closes them (it is draining) or --drain_wait_ms passes -> exit 0.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <semaphore.h>

#include <csignal>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/grpc_serve.h"
#include "common/status_macros.h"
#include "guard_sidecar/guard_service.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50052", "gRPC listen address (port 0 picks a free one)");
// The bundled hazard model (trained on the test bed's sweep) and the
// controller tuned with it (reports/research) are the defaults, the same in
// the chart, compose and the scripts. A path that does not exist is an
// error, never a silent switch to another policy; "none" asks for the
// fallback rule / the built-in controller defaults explicitly.
constexpr char kDefaultModel[] = "models/hazard/hazard.json";
constexpr char kDefaultConfig[] = "models/hazard/controller.json";
ABSL_FLAG(std::string, model, kDefaultModel,
          "XGBoost hazard model (.json/.ubj); none = the fallback rule of the controller config");
ABSL_FLAG(std::string, config, kDefaultConfig,
          "controller JSON (see guard_sidecar/config/controller.json); none = built-in defaults");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9092",
          "Prometheus /metrics address (port 0 picks one); empty = off");
ABSL_FLAG(
    int, threads, 1,
    "XGBoost threads per batched prediction (1 is fastest for per-step batches, guard.md 6.2)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM certificate chain: serve over TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM roots: require client (server) certificates signed by them (mutual TLS)");
ABSL_FLAG(int, tls_reload_s, 10, "how often TLS files are re-read (rotation without restart)");
ABSL_FLAG(bool, enable_reflection, false, "serve gRPC server reflection");
ABSL_FLAG(int, drain_wait_ms, 15000,
          "after SIGTERM, keep serving open streams until they close or this long passes (the "
          "server drains its own streams first and still needs its guard)");

namespace {

using namespace kvguard;  // NOLINT: a binary's main file

sem_t g_shutdown;
void OnSignal(int) { sem_post(&g_shutdown); }

int Fail(const absl::Status& status) {
  std::cerr << "kvguard-guard: " << status << std::endl;
  return 1;
}

struct Setup {
  guard::ControllerConfig controller;
  guard::FallbackHazardConfig fallback;
  std::unique_ptr<guard::HazardPredictor> hazard;
  std::string hazard_name, controller_name;  // what runs, for the log and kvguard_guard_model_info
};

// "none" (or empty) = explicitly not set; anything else must exist.
absl::StatusOr<std::string> FlagPath(const std::string& flag, const std::string& value) {
  if (value.empty() || value == "none") return std::string();
  if (!FileExists(value)) {
    return absl::NotFoundError(
        absl::StrCat("--", flag, "=", value,
                     " does not exist (run from the repository or image root, "
                     "or pass --",
                     flag, "=none)"));
  }
  return value;
}

absl::Status LoadConfig(const std::string& path, Setup& setup) {
  if (path.empty()) return absl::OkStatus();
  KVG_ASSIGN_OR_RETURN(setup.controller, guard::ControllerConfig::Load(path));
  KVG_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  auto fallback =
      guard::FallbackHazardConfig::FromJson(j.value("fallback_hazard", nlohmann::json()));
  if (!fallback.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", fallback.status().message()));
  setup.fallback = *fallback;
  return absl::OkStatus();
}

absl::StatusOr<Setup> Prepare() {
  Setup setup;
  KVG_ASSIGN_OR_RETURN(const std::string config_path,
                       FlagPath("config", absl::GetFlag(FLAGS_config)));
  KVG_RETURN_IF_ERROR(LoadConfig(config_path, setup));
  setup.controller_name = config_path.empty() ? "built-in" : config_path;
  KVG_ASSIGN_OR_RETURN(const std::string model_path, FlagPath("model", absl::GetFlag(FLAGS_model)));
  setup.hazard_name = model_path.empty() ? "fallback-rule" : model_path;
  if (model_path.empty()) {
    setup.hazard = std::make_unique<guard::FallbackHazard>(setup.fallback);
    return setup;
  }
  // The model's stored feature names must all be features this guard computes.
  KVG_ASSIGN_OR_RETURN(auto model,
                       guard::HazardModel::Load(model_path, absl::GetFlag(FLAGS_threads)));
  KVG_ASSIGN_OR_RETURN(setup.hazard, guard::ModelHazard::Create(std::move(model)));
  return setup;
}

std::string Host(const std::string& address) { return address.substr(0, address.rfind(':')); }

absl::StatusOr<std::unique_ptr<grpc::Server>> Listen(grpc::Service& service, int* port) {
  return StartGrpcServer(service,
                         {.listen = absl::GetFlag(FLAGS_listen),
                          .tls = {.cert_file = absl::GetFlag(FLAGS_tls_cert_file),
                                  .key_file = absl::GetFlag(FLAGS_tls_key_file),
                                  .ca_file = absl::GetFlag(FLAGS_tls_client_ca_file),
                                  .reload_s = absl::GetFlag(FLAGS_tls_reload_s)},
                          .reflection = absl::GetFlag(FLAGS_enable_reflection)},
                         port);
}

// The server's link is the guard's only client: while it is open, the server
// is still draining its streams and asking for directives. Serve until it
// closes (the server exited) or --drain_wait_ms passes, then stop.
void Drain(grpc::Server& server, const guard::GuardEngine& engine) {
  server.GetHealthCheckService()->SetServingStatus(false);
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(absl::GetFlag(FLAGS_drain_wait_ms));
  int64_t open = engine.stats().streams_active;
  std::cout << "kvguard-guard: draining (" << open << " open stream(s))" << std::endl;
  while (open > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    open = engine.stats().streams_active;
  }
  if (open > 0)
    std::cout << "kvguard-guard: " << open << " stream(s) still open at the drain limit"
              << std::endl;
  server.Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server.Wait();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("kvguard-guard [--listen ADDR] [--model PATH] [--config PATH] ...");
  // --help lists this binary's flags (absl matches only files named after the program).
  absl::SetFlagsUsageConfig({.contains_help_flags = [](absl::string_view) { return true; }});
  absl::ParseCommandLine(argc, argv);
  auto setup = Prepare();
  if (!setup.ok()) return Fail(setup.status());

  guard::GuardMetrics metrics;
  const std::string metrics_addr = absl::GetFlag(FLAGS_metrics_listen);
  std::string metrics_where = "off";
  if (!metrics_addr.empty()) {
    auto port = metrics.Serve(metrics_addr);
    if (!port.ok()) return Fail(port.status());
    metrics_where = absl::StrCat(Host(metrics_addr), ":", *port);
  }

  metrics.ModelInfo(setup->hazard_name, setup->controller_name);
  guard::GuardEngine engine(*setup->hazard, setup->controller, &metrics);
  guard::GuardServiceImpl service(engine);
  int port = 0;
  auto server = Listen(service, &port);
  if (!server.ok()) return Fail(server.status());
  // The model is loaded and warmed up: ready.
  (*server)->GetHealthCheckService()->SetServingStatus(true);
  std::cout << "kvguard-guard listening on " << Host(absl::GetFlag(FLAGS_listen)) << ":" << port
            << " (metrics " << metrics_where << ", "
            << (absl::GetFlag(FLAGS_tls_cert_file).empty()
                    ? "plaintext"
                    : (absl::GetFlag(FLAGS_tls_client_ca_file).empty() ? "TLS" : "mTLS"))
            << ", hazard " << setup->hazard->Describe() << " from " << setup->hazard_name
            << ", controller " << setup->controller_name << ")" << std::endl;

  sem_init(&g_shutdown, 0, 0);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  while (sem_wait(&g_shutdown) != 0) {
  }
  Drain(**server, engine);
  std::cout << "kvguard-guard: stopped" << std::endl;
  return 0;
}
