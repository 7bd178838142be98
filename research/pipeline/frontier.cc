#include "research/pipeline/frontier.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/svg_plot.h"
#include "research/rng.h"

namespace kvguard::research {

nlohmann::json RecordToJson(const PolicyRecord& r) {
  return {{"prompt_id", r.prompt_id},
          {"compressor", r.compressor},
          {"arm", r.arm},
          {"requested_ratio", r.requested_ratio},
          {"catastrophic", r.catastrophic},
          {"looped", r.looped},
          {"non_terminated", r.non_terminated},
          {"correct", r.correct},
          {"savings_end", r.savings_end},
          {"savings_integrated", r.savings_integrated},
          {"tokens", r.tokens},
          {"fail_safe_events", r.fail_safe_events},
          {"mode_steps", r.mode_steps}};
}

absl::StatusOr<PolicyRecord> RecordFromJson(const nlohmann::json& j) {
  try {
    PolicyRecord r;
    r.prompt_id = j.at("prompt_id").get<std::string>();
    r.compressor = j.at("compressor").get<std::string>();
    r.arm = j.at("arm").get<std::string>();
    r.requested_ratio = j.at("requested_ratio").get<double>();
    r.catastrophic = j.at("catastrophic").get<bool>();
    r.looped = j.value("looped", false);
    r.non_terminated = j.value("non_terminated", false);
    r.correct = j.at("correct").get<bool>();
    r.savings_end = j.at("savings_end").get<double>();
    r.savings_integrated = j.at("savings_integrated").get<double>();
    r.tokens = j.value("tokens", int64_t{0});
    r.fail_safe_events = j.value("fail_safe_events", int64_t{0});
    if (j.contains("mode_steps"))
      r.mode_steps = j["mode_steps"].get<std::map<std::string, int64_t>>();
    return r;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad policy record: ", e.what()));
  }
}

absl::StatusOr<std::vector<PolicyRecord>> ReadRecords(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::vector<PolicyRecord> out;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded())
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": not JSON"));
    auto r = RecordFromJson(j);
    if (!r.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": ", r.status().message()));
    out.push_back(*std::move(r));
  }
  return out;
}

absl::Status WriteRecords(const std::string& path, const std::vector<PolicyRecord>& records) {
  std::string text;
  for (const PolicyRecord& r : records) absl::StrAppend(&text, RecordToJson(r).dump(), "\n");
  return WriteTextFile(path, text);
}

PolicyRecord StaticRecord(const Trace& t, const std::vector<std::string>& feature_names) {
  const auto column = [&](const std::string& name) -> int64_t {
    auto it = std::find(feature_names.begin(), feature_names.end(), name);
    return it == feature_names.end() ? -1 : it - feature_names.begin();
  };
  const int64_t bytes_col = column("kv_bytes"), frac_col = column("kv_retained_frac");
  const int64_t nf = static_cast<int64_t>(feature_names.size());
  PolicyRecord r{.prompt_id = t.prompt_id,
                 .compressor = t.compressor,
                 .arm = t.compressor == "none" ? "none" : absl::StrFormat("static@%g", t.ratio),
                 .requested_ratio = t.ratio,
                 .catastrophic = t.catastrophic,
                 .looped = t.looped,
                 .non_terminated = t.non_terminated,
                 .correct = t.correct,
                 .tokens = t.tokens};
  if (t.compressor != "none" && t.kv_bytes_uncompressed > 0) {
    r.savings_end =
        1.0 - static_cast<double>(t.kv_bytes) / static_cast<double>(t.kv_bytes_uncompressed);
  }
  r.savings_integrated = r.savings_end;
  if (t.compressor != "none" && bytes_col >= 0 && frac_col >= 0 &&
      static_cast<int64_t>(t.features.size()) >= t.tokens * nf) {
    double held = 0, full = 0;
    for (int64_t i = 0; i < t.tokens; ++i) {
      const double bytes = t.features[i * nf + bytes_col], frac = t.features[i * nf + frac_col];
      if (frac <= 0) continue;
      held += bytes;
      full += bytes / frac;
    }
    if (full > 0) r.savings_integrated = 1.0 - held / full;
  }
  return r;
}

absl::StatusOr<std::vector<PolicyRecord>> StaticRecords(
    const std::vector<Trace>& traces, const std::vector<std::string>& feature_names,
    const std::set<std::string>& prompts) {
  std::vector<PolicyRecord> out;
  for (const Trace& t : traces) {
    if (!prompts.empty() && !prompts.count(t.prompt_id)) continue;
    out.push_back(StaticRecord(t, feature_names));
  }
  return out;
}

namespace {

double Cross(const Point& o, const Point& a, const Point& b) {
  return (a.savings - o.savings) * (b.value - o.value) -
         (a.value - o.value) * (b.savings - o.savings);
}

double Savings(const PolicyRecord& r, SavingsMeasure m) {
  return m == SavingsMeasure::kIntegrated ? r.savings_integrated : r.savings_end;
}

// Per arm, the records of each prompt index (-1: the arm lacks the prompt).
struct ArmTable {
  std::vector<std::string> prompts;
  std::map<std::string, std::vector<const PolicyRecord*>> by_arm;
};

struct Means {
  double savings = 0, cfr = 0, accuracy = 0;
};

Means MeanOf(const std::vector<const PolicyRecord*>& rows, const std::vector<int64_t>& sample,
             SavingsMeasure m) {
  Means out;
  for (int64_t i : sample) {
    out.savings += Savings(*rows[i], m);
    out.cfr += rows[i]->catastrophic;
    out.accuracy += rows[i]->correct;
  }
  const double n = static_cast<double>(sample.size());
  return {out.savings / n, out.cfr / n, out.accuracy / n};
}

struct Gaps {
  Point guard_cfr, guard_accuracy;
  std::optional<double> hull_cfr, hull_accuracy;
};

Gaps GapsOn(const ArmTable& table, const std::string& arm, const std::vector<int64_t>& sample,
            SavingsMeasure m) {
  std::vector<Point> cfr_points, acc_points;
  Gaps g;
  for (const auto& [name, rows] : table.by_arm) {
    const Means means = MeanOf(rows, sample, m);
    if (name == arm) {
      g.guard_cfr = {means.savings, means.cfr};
      g.guard_accuracy = {means.savings, means.accuracy};
    } else {
      cfr_points.push_back({means.savings, means.cfr});
      acc_points.push_back({means.savings, means.accuracy});
    }
  }
  g.hull_cfr = FrontierAt(ConvexFrontier(cfr_points, false), g.guard_cfr.savings);
  g.hull_accuracy = FrontierAt(ConvexFrontier(acc_points, true), g.guard_accuracy.savings);
  return g;
}

Interval Percentiles(std::vector<double> values, double estimate, double confidence) {
  Interval out{.estimate = estimate, .lo = NAN, .hi = NAN};
  if (values.empty()) return out;
  std::sort(values.begin(), values.end());
  const double tail = (1 - confidence) / 2;
  const auto at = [&](double q) {
    const double pos = q * static_cast<double>(values.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(values.size() - 1, lo + 1);
    return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
  };
  out.lo = at(tail);
  out.hi = at(1 - tail);
  return out;
}

}  // namespace

std::vector<Point> ConvexFrontier(std::vector<Point> points, bool upper) {
  std::sort(points.begin(), points.end(), [&](const Point& a, const Point& b) {
    if (a.savings != b.savings) return a.savings < b.savings;
    return upper ? a.value > b.value : a.value < b.value;  // the best value first
  });
  std::vector<Point> hull;
  for (const Point& p : points) {
    if (!hull.empty() && hull.back().savings == p.savings) continue;  // a worse duplicate
    // Lower hull: keep left (counter-clockwise) turns; upper hull: right turns.
    while (hull.size() >= 2 && (upper ? Cross(hull[hull.size() - 2], hull.back(), p) >= 0
                                      : Cross(hull[hull.size() - 2], hull.back(), p) <= 0)) {
      hull.pop_back();
    }
    hull.push_back(p);
  }
  return hull;
}

std::optional<double> FrontierAt(const std::vector<Point>& hull, double savings) {
  constexpr double kEps = 1e-9;
  if (hull.empty() || savings < hull.front().savings - kEps ||
      savings > hull.back().savings + kEps) {
    return std::nullopt;
  }
  for (size_t i = 1; i < hull.size(); ++i) {
    if (savings <= hull[i].savings + kEps) {
      const Point& a = hull[i - 1];
      const Point& b = hull[i];
      const double w =
          b.savings > a.savings ? (savings - a.savings) / (b.savings - a.savings) : 1.0;
      return a.value + std::clamp(w, 0.0, 1.0) * (b.value - a.value);
    }
  }
  return hull.back().value;
}

std::map<std::string, std::pair<Point, Point>> StaticPoints(
    const std::vector<PolicyRecord>& records, const std::string& compressor,
    SavingsMeasure measure) {
  std::map<std::string, Means> sums;
  std::map<std::string, int64_t> counts;
  for (const PolicyRecord& r : records) {
    const bool is_static =
        r.arm == "none" || (r.compressor == compressor && r.arm.starts_with("static@"));
    if (!is_static) continue;
    Means& m = sums[r.arm];
    m.savings += Savings(r, measure);
    m.cfr += r.catastrophic;
    m.accuracy += r.correct;
    ++counts[r.arm];
  }
  std::map<std::string, std::pair<Point, Point>> out;
  for (const auto& [arm, m] : sums) {
    const double n = static_cast<double>(counts[arm]);
    out[arm] = {{m.savings / n, m.cfr / n}, {m.savings / n, m.accuracy / n}};
  }
  return out;
}

absl::StatusOr<FrontierResult> EvaluateFrontier(const std::vector<PolicyRecord>& records,
                                                const std::string& compressor,
                                                const std::string& arm,
                                                const FrontierOptions& options) {
  // Arms that take part: the guard arm, this compressor's static arms and "none".
  std::map<std::string, std::map<std::string, const PolicyRecord*>> by_arm;
  for (const PolicyRecord& r : records) {
    const bool mine = r.arm == "none" || (r.compressor == compressor &&
                                          (r.arm == arm || r.arm.starts_with("static@")));
    if (mine) by_arm[r.arm][r.prompt_id] = &r;
  }
  if (!by_arm.count(arm))
    return absl::NotFoundError(absl::StrCat("no records of ", compressor, " ", arm));
  if (by_arm.size() < 2)
    return absl::NotFoundError(absl::StrCat("no static records of ", compressor));
  // Paired: the prompts every arm has.
  ArmTable table;
  for (const auto& [prompt, _] : by_arm[arm]) {
    bool everywhere = true;
    for (const auto& [name, rows] : by_arm) everywhere &= rows.count(prompt) > 0;
    if (everywhere) table.prompts.push_back(prompt);
  }
  if (table.prompts.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(compressor, " ", arm, " shares no prompt with its static arms"));
  }
  for (const auto& [name, rows] : by_arm) {
    auto& column = table.by_arm[name];
    for (const std::string& p : table.prompts) column.push_back(rows.at(p));
  }
  const int64_t n = static_cast<int64_t>(table.prompts.size());
  std::vector<int64_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[i] = i;
  const Gaps point = GapsOn(table, arm, all, options.measure);

  FrontierResult out{.compressor = compressor, .arm = arm, .prompts = n};
  out.guard_cfr = point.guard_cfr;
  out.guard_accuracy = point.guard_accuracy;
  out.hull_cfr = point.hull_cfr;
  out.hull_accuracy = point.hull_accuracy;
  out.cfr_ratio =
      point.hull_cfr && *point.hull_cfr > 0 ? point.guard_cfr.value / *point.hull_cfr : NAN;
  std::vector<double> cfr_gaps, acc_gaps;
  SplitMix64 rng(HashCombine(options.seed, 0xF207));
  std::vector<int64_t> sample(n);
  for (int b = 0; b < options.resamples; ++b) {
    for (int64_t i = 0; i < n; ++i) sample[i] = rng.Uniform(0, n - 1);
    const Gaps g = GapsOn(table, arm, sample, options.measure);
    if (!g.hull_cfr || !g.hull_accuracy) {
      ++out.resamples_outside_hull;
      continue;
    }
    cfr_gaps.push_back(*g.hull_cfr - g.guard_cfr.value);
    acc_gaps.push_back(g.guard_accuracy.value - *g.hull_accuracy);
  }
  out.cfr_gap = Percentiles(
      cfr_gaps, point.hull_cfr ? *point.hull_cfr - point.guard_cfr.value : NAN, options.confidence);
  out.accuracy_gap = Percentiles(
      acc_gaps, point.hull_accuracy ? point.guard_accuracy.value - *point.hull_accuracy : NAN,
      options.confidence);
  return out;
}

namespace {

std::string Cell(const Interval& i) {
  if (std::isnan(i.estimate)) return "outside the static range";
  return absl::StrFormat("%+.3f [%+.3f, %+.3f]", i.estimate, i.lo, i.hi);
}

std::string Opt(const std::optional<double>& v) { return v ? absl::StrFormat("%.3f", *v) : "-"; }

std::string Verdict(const FrontierResult& r) {
  if (!r.hull_cfr) return "outside the static range";
  const bool below = r.cfr_gap.lo > 0;  // CFR below the hull, CI excludes 0
  const bool above = r.cfr_gap.hi < 0;  // CFR above the hull, CI excludes 0
  const bool halved = *r.hull_cfr > 0 && r.guard_cfr.value <= 0.5 * *r.hull_cfr;
  const bool accuracy_below = r.accuracy_gap.hi < 0;  // accuracy below the hull, CI excludes 0
  if (below && halved && !accuracy_below) return "dominates (CFR <= half the hull, CI excludes 0)";
  if (below && accuracy_below) return "CFR below the hull, accuracy below it";
  if (below) return "CFR below the hull, not halved";
  if (above) return "CFR above the hull (a static mix is better)";
  return accuracy_below ? "CFR not distinguishable, accuracy below the hull"
                        : "not distinguishable from the hull";
}

// The static policies' table: per (compressor, arm), both savings measures, CFR and accuracy.
void AppendStaticTable(const std::vector<PolicyRecord>& records, std::string& md,
                       nlohmann::json& json) {
  struct Sums {
    double n = 0, end = 0, integrated = 0, cfr = 0, accuracy = 0;
  };
  std::map<std::pair<std::string, std::string>, Sums> sums;
  for (const PolicyRecord& r : records) {
    if (!r.arm.starts_with("static@") && r.arm != "none") continue;
    Sums& s = sums[{r.compressor, r.arm}];
    s.n += 1;
    s.end += r.savings_end;
    s.integrated += r.savings_integrated;
    s.cfr += r.catastrophic;
    s.accuracy += r.correct;
  }
  for (const auto& [key, s] : sums) {
    absl::StrAppendFormat(&md, "| %s | %s | %d | %.3f | %.3f | %.3f | %.3f |\n", key.first,
                          key.second, static_cast<int64_t>(s.n), s.end / s.n, s.integrated / s.n,
                          s.cfr / s.n, s.accuracy / s.n);
    json.push_back({{"compressor", key.first},
                    {"arm", key.second},
                    {"prompts", s.n},
                    {"savings_end", s.end / s.n},
                    {"savings_integrated", s.integrated / s.n},
                    {"cfr", s.cfr / s.n},
                    {"accuracy", s.accuracy / s.n}});
  }
}

// One compressor's plots, started with its static points (by savings) and their hulls.
std::pair<PlotSpec, PlotSpec> StaticPlots(const std::vector<PolicyRecord>& records,
                                          const std::string& c, SavingsMeasure m,
                                          const std::string& measure_name) {
  PlotSpec cfr_plot{.title = "CFR vs KV savings: " + c,
                    .x_label = "KV savings (" + measure_name + ")",
                    .y_label = "CFR"};
  PlotSpec acc_plot{
      .title = "Accuracy vs KV savings: " + c, .x_label = cfr_plot.x_label, .y_label = "accuracy"};
  std::vector<std::pair<Point, Point>> ordered;
  for (const auto& [arm, p] : StaticPoints(records, c, m)) ordered.push_back(p);
  std::sort(ordered.begin(), ordered.end(),
            [](auto& a, auto& b) { return a.first.savings < b.first.savings; });
  std::vector<Point> cfr_points, acc_points;
  PlotSeries s_cfr{.name = "static ratios"}, s_acc{.name = "static ratios"};
  for (const auto& [pc, pa] : ordered) {
    cfr_points.push_back(pc);
    acc_points.push_back(pa);
    s_cfr.x.push_back(pc.savings);
    s_cfr.y.push_back(pc.value);
    s_acc.x.push_back(pa.savings);
    s_acc.y.push_back(pa.value);
  }
  const auto hull_series = [](const std::vector<Point>& hull) {
    PlotSeries h{.name = "static hull (mixtures)"};
    for (const Point& p : hull) {
      h.x.push_back(p.savings);
      h.y.push_back(p.value);
    }
    return h;
  };
  cfr_plot.series = {s_cfr, hull_series(ConvexFrontier(cfr_points, false))};
  acc_plot.series = {s_acc, hull_series(ConvexFrontier(acc_points, true))};
  return {cfr_plot, acc_plot};
}

// One guard arm's row of the gap table, in markdown, CSV and JSON.
void AppendGuardRow(const FrontierResult& r, std::string& md, std::string& csv,
                    nlohmann::json& json) {
  absl::StrAppendFormat(
      &md, "| %s | %s | %d | %.3f | %.3f | %s | %s | %s | %.3f | %s | %s | %s |\n", r.compressor,
      r.arm, r.prompts, r.guard_cfr.savings, r.guard_cfr.value, Opt(r.hull_cfr), Cell(r.cfr_gap),
      std::isnan(r.cfr_ratio) ? "-" : absl::StrFormat("%.2f", r.cfr_ratio), r.guard_accuracy.value,
      Opt(r.hull_accuracy), Cell(r.accuracy_gap), Verdict(r));
  absl::StrAppendFormat(&csv, "%s,%s,%d,%g,%g,%g,%g,%g,%g,%g,%g,%g,%g,%g,%g\n", r.compressor, r.arm,
                        r.prompts, r.guard_cfr.savings, r.guard_cfr.value, r.hull_cfr.value_or(NAN),
                        r.cfr_gap.estimate, r.cfr_gap.lo, r.cfr_gap.hi, r.cfr_ratio,
                        r.guard_accuracy.value, r.hull_accuracy.value_or(NAN),
                        r.accuracy_gap.estimate, r.accuracy_gap.lo, r.accuracy_gap.hi);
  json.push_back(
      {{"compressor", r.compressor},
       {"arm", r.arm},
       {"prompts", r.prompts},
       {"guard_savings", r.guard_cfr.savings},
       {"guard_cfr", r.guard_cfr.value},
       {"hull_cfr", r.hull_cfr ? nlohmann::json(*r.hull_cfr) : nlohmann::json()},
       {"cfr_gap", {r.cfr_gap.estimate, r.cfr_gap.lo, r.cfr_gap.hi}},
       {"guard_accuracy", r.guard_accuracy.value},
       {"hull_accuracy", r.hull_accuracy ? nlohmann::json(*r.hull_accuracy) : nlohmann::json()},
       {"accuracy_gap", {r.accuracy_gap.estimate, r.accuracy_gap.lo, r.accuracy_gap.hi}},
       {"resamples_outside_hull", r.resamples_outside_hull},
       {"verdict", Verdict(r)}});
}

}  // namespace

absl::StatusOr<std::string> WriteFrontierReport(const std::vector<PolicyRecord>& records,
                                                const FrontierReportOptions& options) {
  std::set<std::string> compressors;
  std::map<std::string, std::set<std::string>> guard_arms;
  for (const PolicyRecord& r : records) {
    if (r.compressor == "none") continue;
    compressors.insert(r.compressor);
    if (!r.arm.starts_with("static@")) guard_arms[r.compressor].insert(r.arm);
  }
  const SavingsMeasure m = options.frontier.measure;
  const std::string measure_name = m == SavingsMeasure::kIntegrated
                                       ? "integrated over the generation (byte-steps)"
                                       : "at completion";
  std::string md = absl::StrCat(
      "# The static frontier and the guard\n\nKV savings ", measure_name,
      "; CFR and accuracy per policy over the same prompts. Static compression is summed up "
      "by the lower convex hull of its (savings, CFR) points (upper hull for accuracy): a "
      "mix of two static ratios per request is a policy too. Gap = hull CFR at the guard's "
      "savings - guard CFR, paired bootstrap over prompts (",
      options.frontier.resamples, " resamples, ", 100 * options.frontier.confidence,
      "% percentile interval).\n\n## Static policies\n\n"
      "| compressor | arm | prompts | savings (end) | savings (integrated) | CFR | accuracy |\n"
      "| --- | --- | --- | --- | --- | --- | --- |\n");
  std::string csv =
      "compressor,arm,prompts,guard_savings,guard_cfr,hull_cfr,cfr_gap,cfr_gap_lo,cfr_gap_hi,cfr_"
      "ratio,"
      "guard_accuracy,hull_accuracy,accuracy_gap,accuracy_gap_lo,accuracy_gap_hi\n";
  nlohmann::json json_static = nlohmann::json::array(), json_guard = nlohmann::json::array();
  AppendStaticTable(records, md, json_static);
  md +=
      "\n## Guard policies against the static frontier\n\n"
      "| compressor | arm | prompts | guard savings | guard CFR | hull CFR there | CFR gap [CI] | "
      "guard / hull CFR | guard accuracy | hull accuracy there | accuracy gap [CI] | verdict |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  std::filesystem::create_directories(options.out_dir);
  for (const std::string& c : compressors) {
    auto [cfr_plot, acc_plot] = StaticPlots(records, c, m, measure_name);
    for (const std::string& arm : guard_arms[c]) {
      KVG_ASSIGN_OR_RETURN(FrontierResult r, EvaluateFrontier(records, c, arm, options.frontier));
      AppendGuardRow(r, md, csv, json_guard);
      cfr_plot.series.push_back(
          {.name = arm, .x = {r.guard_cfr.savings}, .y = {r.guard_cfr.value}});
      acc_plot.series.push_back(
          {.name = arm, .x = {r.guard_accuracy.savings}, .y = {r.guard_accuracy.value}});
    }
    KVG_RETURN_IF_ERROR(WriteSvgPlot(cfr_plot, options.out_dir + "/frontier_cfr_" + c + ".svg"));
    KVG_RETURN_IF_ERROR(
        WriteSvgPlot(acc_plot, options.out_dir + "/frontier_accuracy_" + c + ".svg"));
  }
  if (json_guard.empty()) md += "| (no guard records) | | | | | | | | | | | |\n";
  md +=
      "\nVerdict: *dominates* = guard CFR <= half the hull's CFR at the same savings with the CI "
      "of the gap above 0 and accuracy not below the hull (its gap's CI not entirely below 0).\n";
  KVG_RETURN_IF_ERROR(WriteTextFile(options.out_dir + "/frontier.md", md));
  KVG_RETURN_IF_ERROR(WriteTextFile(options.out_dir + "/frontier.csv", csv));
  KVG_RETURN_IF_ERROR(WriteTextFile(
      options.out_dir + "/frontier.json",
      nlohmann::json{{"measure", measure_name}, {"static", json_static}, {"guard", json_guard}}
          .dump(1)));
  return md;
}

}  // namespace kvguard::research
