#include "loadtest/report.h"

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/svg_plot.h"
#include "research/stats.h"

namespace kvguard::loadtest {

Dist Distribution(std::vector<double> v) {
  Dist d;
  d.n = static_cast<int64_t>(v.size());
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  auto q = [&](double p) {
    const double pos = p * (v.size() - 1);
    const size_t lo = static_cast<size_t>(pos);
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - lo);
  };
  d.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  d.p50 = q(0.5);
  d.p90 = q(0.9);
  d.p99 = q(0.99);
  return d;
}

Summary Summarize(const LoadResult& result, const Slo& slo) {
  Summary s;
  s.name = result.spec.name;
  s.spec = result.spec;
  s.duration_s = result.duration_s;
  std::vector<double> ttft, itl, tpot, e2e, saved;
  int64_t tokens = 0, good = 0, catastrophic = 0, correct = 0, wrong = 0, graded = 0;
  for (const RequestRecord& r : result.records) {
    ++s.requests;
    if (r.status != "OK") {
      ++s.errors[r.status];
      continue;
    }
    ++s.ok;
    tokens += r.output_tokens;
    const double t_tpot = r.output_tokens > 1 ? (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) : 0;
    ttft.push_back(1000 * r.ttft_s);
    e2e.push_back(1000 * r.e2e_s);
    tpot.push_back(1000 * t_tpot);
    for (double g : r.itl_s) itl.push_back(1000 * g);
    good += 1000 * r.ttft_s <= slo.ttft_ms && 1000 * t_tpot <= slo.tpot_ms &&
            1000 * r.e2e_s <= slo.e2e_ms;
    catastrophic += r.looped || r.non_terminated;
    correct += r.correct;
    wrong += r.wrong_answer;
    graded += r.correct || r.wrong_answer;
    if (r.kv_bytes + r.kv_bytes_saved > 0)
      saved.push_back(double(r.kv_bytes_saved) / (r.kv_bytes + r.kv_bytes_saved));
    s.fail_safe_events += r.fail_safe_events;
  }
  s.ttft_ms = Distribution(ttft);
  s.itl_ms = Distribution(itl);
  s.tpot_ms = Distribution(tpot);
  s.e2e_ms = Distribution(e2e);
  if (s.duration_s > 0) {
    s.request_throughput = s.ok / s.duration_s;
    s.token_throughput = tokens / s.duration_s;
    s.goodput = good / s.duration_s;
  }
  const auto ci = research::WilsonInterval(catastrophic, s.ok);
  s.cfr = ci.rate;
  s.cfr_lo = ci.lo;
  s.cfr_hi = ci.hi;
  s.accuracy = graded ? double(correct) / graded : 0;
  s.wrong_answer_rate = graded ? double(wrong) / graded : 0;
  s.kv_saved_fraction =
      saved.empty() ? 0 : std::accumulate(saved.begin(), saved.end(), 0.0) / saved.size();
  return s;
}

namespace {

nlohmann::json DistJson(const Dist& d) {
  return {{"mean", d.mean}, {"p50", d.p50}, {"p90", d.p90}, {"p99", d.p99}, {"n", d.n}};
}

}  // namespace

nlohmann::json ToJson(const Summary& s) {
  nlohmann::json server = nullptr;
  if (s.server.scraped) {
    server = {{"kv_pool_bytes", s.server.kv_pool_bytes},
              {"kv_pool_used_max", s.server.kv_pool_used_max},
              {"kv_pool_used_mean", s.server.kv_pool_used_mean},
              {"active_mean", s.server.active_mean},
              {"active_max", s.server.active_max},
              {"admitted", s.server.admitted},
              {"resumed", s.server.resumed},
              {"preemptions", s.server.preemptions},
              {"queue_time_mean_s", s.server.queue_time_mean_s}};
  }
  return {{"server", server},
          {"name", s.name},
          {"mode", s.spec.mode},
          {"concurrency", s.spec.concurrency},
          {"rate", s.spec.rate},
          {"compressor", s.spec.compressor},
          {"ratio", s.spec.ratio},
          {"guard", s.spec.guard},
          {"requests", s.requests},
          {"ok", s.ok},
          {"errors", s.errors},
          {"duration_s", s.duration_s},
          {"request_throughput", s.request_throughput},
          {"token_throughput", s.token_throughput},
          {"goodput", s.goodput},
          {"ttft_ms", DistJson(s.ttft_ms)},
          {"itl_ms", DistJson(s.itl_ms)},
          {"tpot_ms", DistJson(s.tpot_ms)},
          {"e2e_ms", DistJson(s.e2e_ms)},
          {"cfr", s.cfr},
          {"cfr_ci95", {s.cfr_lo, s.cfr_hi}},
          {"accuracy", s.accuracy},
          {"wrong_answer_rate", s.wrong_answer_rate},
          {"kv_saved_fraction", s.kv_saved_fraction},
          {"fail_safe_events", s.fail_safe_events}};
}

std::string MarkdownTable(const std::vector<Summary>& rows) {
  std::string md =
      "| run | load | ok/req | TTFT p50/p99 ms | ITL p50/p99 ms | TPOT p50 ms | E2E p50/p90/p99 ms "
      "| req/s | tok/s | "
      "goodput/s | CFR [95% CI] | acc | KV saved | fail-safe | errors |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
      "|\n";
  for (const Summary& s : rows) {
    std::string errors;
    for (const auto& [k, v] : s.errors)
      absl::StrAppend(&errors, errors.empty() ? "" : ", ", k, ":", v);
    const std::string load = s.spec.mode == "closed" ? absl::StrCat("c=", s.spec.concurrency)
                                                     : absl::StrFormat("%.2g rps", s.spec.rate);
    absl::StrAppendFormat(
        &md,
        "| %s | %s | %d/%d | %.1f / %.1f | %.2f / %.2f | %.2f | %.0f / %.0f / %.0f | %.2f | %.1f | "
        "%.2f | %.3f [%.3f, %.3f] | %.3f | %.2f | %d | %s |\n",
        s.name, load, s.ok, s.requests, s.ttft_ms.p50, s.ttft_ms.p99, s.itl_ms.p50, s.itl_ms.p99,
        s.tpot_ms.p50, s.e2e_ms.p50, s.e2e_ms.p90, s.e2e_ms.p99, s.request_throughput,
        s.token_throughput, s.goodput, s.cfr, s.cfr_lo, s.cfr_hi, s.accuracy, s.kv_saved_fraction,
        s.fail_safe_events, errors.empty() ? "none" : errors);
  }
  // What the server said about the same runs (KV pool, admission, preemption).
  if (std::any_of(rows.begin(), rows.end(), [](const Summary& s) { return s.server.scraped; })) {
    md +=
        "\n| run | concurrent mean / max | KV pool used mean / max MiB (pool MiB) | admitted | "
        "resumed | "
        "preemptions | queue mean s |\n| --- | --- | --- | --- | --- | --- | --- |\n";
    for (const Summary& s : rows) {
      if (!s.server.scraped) continue;
      const ServerSideStats& v = s.server;
      absl::StrAppendFormat(
          &md, "| %s | %.1f / %.0f | %.1f / %.1f (%.1f) | %.0f | %.0f | %.0f | %.3f |\n", s.name,
          v.active_mean, v.active_max, v.kv_pool_used_mean / 1048576.0,
          v.kv_pool_used_max / 1048576.0, v.kv_pool_bytes / 1048576.0, v.admitted, v.resumed,
          v.preemptions, v.queue_time_mean_s);
    }
  }
  return md;
}

absl::Status WriteCampaignReport(const std::string& dir, const std::string& title,
                                 const std::vector<Summary>& summaries,
                                 const std::vector<LoadResult>& results) {
  std::filesystem::create_directories(dir);
  nlohmann::json all = nlohmann::json::array();
  for (const Summary& s : summaries) all.push_back(ToJson(s));
  if (auto st = WriteTextFile(dir + "/summary.json", all.dump(2)); !st.ok()) return st;
  if (auto st =
          WriteTextFile(dir + "/summary.md", "# " + title + "\n\n" + MarkdownTable(summaries));
      !st.ok())
    return st;
  std::string csv =
      "run,prompt_id,status,start_s,ttft_s,e2e_s,output_tokens,looped,non_terminated,correct,kv_"
      "bytes,kv_bytes_saved\n";
  for (const LoadResult& r : results) {
    for (const RequestRecord& q : r.records) {
      // Run names from multi-key sweeps contain commas: quote them.
      absl::StrAppendFormat(&csv, "\"%s\",%s,%s,%.6f,%.6f,%.6f,%d,%d,%d,%d,%d,%d\n", r.spec.name,
                            q.prompt_id, q.status, q.start_s, q.ttft_s, q.e2e_s, q.output_tokens,
                            q.looped, q.non_terminated, q.correct, q.kv_bytes, q.kv_bytes_saved);
    }
  }
  if (auto st = WriteTextFile(dir + "/requests.csv", csv); !st.ok()) return st;
  // One series per (compressor, ratio, guard) variant, x = offered load.
  std::map<std::string, std::vector<const Summary*>> variants;
  for (const Summary& s : summaries) {
    variants[absl::StrCat(s.spec.compressor.empty() ? "default" : s.spec.compressor,
                          s.spec.ratio >= 0 ? absl::StrCat("@", s.spec.ratio) : "",
                          s.spec.guard.empty() ? "" : absl::StrCat(" guard=", s.spec.guard))]
        .push_back(&s);
  }
  PlotSpec e2e{.title = title + ": end-to-end latency",
               .x_label = "offered load (concurrency or req/s)",
               .y_label = "ms (p50 solid points, p99 bars)"};
  PlotSpec itl{
      .title = title + ": inter-token latency p99", .x_label = "offered load", .y_label = "ms"};
  PlotSpec thr{.title = title + ": output token throughput",
               .x_label = "offered load",
               .y_label = "tokens/s"};
  PlotSpec cfr{
      .title = title + ": CFR under load (95% CI)", .x_label = "offered load", .y_label = "CFR"};
  for (const auto& [name, rows] : variants) {
    PlotSeries a{.name = name}, b{.name = name}, c{.name = name}, d{.name = name};
    for (const Summary* s : rows) {
      const double x = s->spec.mode == "closed" ? s->spec.concurrency : s->spec.rate;
      a.x.push_back(x), a.y.push_back(s->e2e_ms.p50), a.y_lo.push_back(s->e2e_ms.p50),
          a.y_hi.push_back(s->e2e_ms.p99);
      b.x.push_back(x), b.y.push_back(s->itl_ms.p99);
      c.x.push_back(x), c.y.push_back(s->token_throughput);
      d.x.push_back(x), d.y.push_back(s->cfr), d.y_lo.push_back(s->cfr_lo),
          d.y_hi.push_back(s->cfr_hi);
    }
    e2e.series.push_back(a), itl.series.push_back(b), thr.series.push_back(c),
        cfr.series.push_back(d);
  }
  for (auto [plot, file] : {std::pair{&e2e, "latency_e2e.svg"},
                            {&itl, "latency_itl_p99.svg"},
                            {&thr, "throughput.svg"},
                            {&cfr, "cfr_under_load.svg"}}) {
    if (auto st = WriteSvgPlot(*plot, dir + "/" + file); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace kvguard::loadtest
