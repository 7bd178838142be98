// kvguard-loadtest: closed-loop / open-loop load campaigns against a
// kvguard-server on loopback, with TTFT / ITL / TPOT / E2E percentiles,
// throughput, goodput, errors and CFR under load.
//
//   build/bin/kvguard-loadtest --campaign loadtest/campaigns/smoke.json --target 127.0.0.1:50051
//   --out reports/load
#include <cstdio>
#include <iostream>
#include <optional>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "loadtest/campaign.h"
#include "loadtest/report.h"

ABSL_FLAG(std::string, campaign, "", "campaign JSON file (required)");
ABSL_FLAG(std::string, target, "", "override the campaign's target (loopback only)");
ABSL_FLAG(std::string, out, "reports/loadtest", "report directory");
ABSL_FLAG(int, server_metrics_port, 0,
          "the server's /metrics port on loopback: report its KV pool, concurrency, admissions, "
          "preemptions and queue time per run (0 = off)");
ABSL_FLAG(std::string, lb_policy, "",
          "round_robin: spread calls over every address of the target (ipv4:a,b or dns:///)");
ABSL_FLAG(std::string, tls_ca_file, "", "PEM roots that verify the server (TLS)");
ABSL_FLAG(std::string, tls_server_name, "", "name expected in the server's certificate");
ABSL_FLAG(std::string, auth_token_file, "", "file holding the bearer token to send");

int main(int argc, char** argv) {
  // --help lists this binary's flags (absl matches only files named after the program).
  absl::SetFlagsUsageConfig({.contains_help_flags = [](absl::string_view) { return true; }});
  absl::ParseCommandLine(argc, argv);
  using namespace kvguard::loadtest;
  auto campaign = LoadCampaign(absl::GetFlag(FLAGS_campaign), absl::GetFlag(FLAGS_target));
  if (!campaign.ok()) {
    std::cerr << "kvguard-loadtest: " << campaign.status().message() << "\n";
    return 1;
  }
  kvguard::client::ChannelOptions channel{
      .lb_policy = absl::GetFlag(FLAGS_lb_policy),
      .tls_files = {.ca_file = absl::GetFlag(FLAGS_tls_ca_file),
                    .server_name = absl::GetFlag(FLAGS_tls_server_name)}};
  if (const std::string path = absl::GetFlag(FLAGS_auth_token_file); !path.empty()) {
    auto text = kvguard::ReadFileToString(path);
    if (!text.ok()) {
      std::cerr << "kvguard-loadtest: " << text.status().message() << "\n";
      return 1;
    }
    channel.auth_token = std::string(absl::StripAsciiWhitespace(*text));
  }
  for (LoadSpec& spec : campaign->runs) spec.channel = channel;
  std::vector<Summary> summaries;
  std::vector<LoadResult> results;
  const size_t total = campaign->runs.size();
  for (size_t i = 0; i < total; ++i) {
    const LoadSpec& spec = campaign->runs[i];
    const auto start = std::chrono::steady_clock::now();
    std::optional<ServerMetricsSampler> sampler;
    if (absl::GetFlag(FLAGS_server_metrics_port) > 0)
      sampler.emplace(absl::GetFlag(FLAGS_server_metrics_port));
    auto result = RunLoad(spec, campaign->prompts, [&](int done, int n) {
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = s > 0 ? done / s : 0;
      std::fprintf(stderr, "\r[run %zu/%zu %s] %d/%d requests, %.2f req/s, ETA %.0fs   ", i + 1,
                   total, spec.name.c_str(), done, n, rate, rate > 0 ? (n - done) / rate : 0.0);
    });
    std::fprintf(stderr, "\n");
    if (!result.ok()) {
      std::cerr << "kvguard-loadtest: " << result.status().message() << "\n";
      return 1;
    }
    summaries.push_back(Summarize(*result, campaign->slo));
    if (sampler) summaries.back().server = sampler->Stop();
    results.push_back(std::move(*result));
  }
  const std::string out = absl::GetFlag(FLAGS_out);
  if (auto s = WriteCampaignReport(out, campaign->name, summaries, results); !s.ok()) {
    std::cerr << "kvguard-loadtest: " << s.message() << "\n";
    return 1;
  }
  std::cout << MarkdownTable(summaries) << "\nreport: " << out
            << "/summary.{json,md}, requests.csv, *.svg\n";
  return 0;
}
