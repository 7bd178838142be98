// File: loadtest/report.h
//
// Summaries of load runs (vLLM's definitions: TTFT, ITL over every chunk gap,
// TPOT = (e2e - ttft) / (tokens - 1), goodput = requests meeting every SLO
// per second) plus CFR under load with a Wilson interval, and the campaign
// report: JSON, markdown and SVG plots.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "loadtest/load_generator.h"
#include "loadtest/server_metrics.h"
#include "nlohmann/json.hpp"

namespace kvguard::loadtest {

struct Slo {
  double ttft_ms = 1000, tpot_ms = 100, e2e_ms = 20000;
};

struct Dist {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
  int64_t n = 0;
};
Dist Distribution(std::vector<double> values);

struct Summary {
  std::string name;
  LoadSpec spec;
  int64_t requests = 0, ok = 0;
  std::map<std::string, int64_t> errors;  // status name -> count
  double duration_s = 0, request_throughput = 0, token_throughput = 0, goodput = 0;
  Dist ttft_ms, itl_ms, tpot_ms, e2e_ms;
  double cfr = 0, cfr_lo = 0, cfr_hi = 0;  // loops + non-terminations among OK requests
  double accuracy = 0, wrong_answer_rate = 0;
  double kv_saved_fraction = 0;  // mean saved / (saved + held)
  int64_t fail_safe_events = 0;
  ServerSideStats server;  // from the server's /metrics (--server_metrics_port), if scraped
};

Summary Summarize(const LoadResult& result, const Slo& slo);
nlohmann::json ToJson(const Summary& s);
std::string MarkdownTable(const std::vector<Summary>& summaries);
// Writes summary.json, summary.md, requests.csv and plots (latency, throughput, CFR vs the swept
// load).
absl::Status WriteCampaignReport(const std::string& dir, const std::string& title,
                                 const std::vector<Summary>& summaries,
                                 const std::vector<LoadResult>& results);

}  // namespace kvguard::loadtest
