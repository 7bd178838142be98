#include "research/pipeline/predictor.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/svg_plot.h"
#include "research/stats.h"
#include "research/pipeline/metrics.h"
#include "research/rng.h"

namespace kvguard::research {
namespace {

using guard::FeatureSchema;

uint64_t Hash(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

struct Selection {
  std::vector<const Trace*> traces;
};

guard::Dataset BuildDataset(const Selection& sel, const FeatureSchema& schema, int64_t nf, int horizon) {
  guard::Dataset d;
  d.feature_names = schema.names();
  for (const Trace* t : sel.traces) {
    for (int64_t i = 0; i < t->tokens; ++i) {
      std::span<const float> row(t->features.data() + i * nf, static_cast<size_t>(nf));
      std::vector<float> projected = schema.ProjectRows(row);
      d.features.insert(d.features.end(), projected.begin(), projected.end());
      d.labels.push_back(TokenLabel(*t, i, horizon) ? 1.0f : 0.0f);
    }
  }
  return d;
}

struct Eval {
  double auroc = NAN, auroc_pre = NAN, recall_at_fpr = NAN, threshold = 0;
  double trace_detection = NAN, trace_false_alarm = NAN, lead_time_mean = NAN, lead_time_median = NAN;
  int64_t positives = 0, negatives = 0, catastrophic_traces = 0, clean_traces = 0;
};

Eval Evaluate(const guard::HazardModel& model, const Selection& sel, const FeatureSchema& schema, int64_t nf,
              int horizon, double target_fpr) {
  Eval e;
  std::vector<float> all_s, pre_s;
  std::vector<uint8_t> all_y, pre_y;
  std::vector<std::vector<float>> per_trace;
  for (const Trace* t : sel.traces) {
    guard::Dataset one = BuildDataset({.traces = {t}}, schema, nf, horizon);
    auto scores = model.PredictBatch(one.features);
    per_trace.push_back(scores.ok() ? *scores : std::vector<float>(t->tokens, 0.f));
    for (int64_t i = 0; i < t->tokens; ++i) {
      const float s = per_trace.back()[i];
      const bool y = TokenLabel(*t, i, horizon);
      all_s.push_back(s), all_y.push_back(y);
      if (PreOnset(*t, i)) pre_s.push_back(s), pre_y.push_back(y);
      (y ? e.positives : e.negatives)++;
    }
  }
  e.auroc = Auroc(all_s, all_y);
  e.auroc_pre = Auroc(pre_s, pre_y);
  e.threshold = ThresholdAtFpr(pre_s, pre_y, target_fpr);
  e.recall_at_fpr = RecallAt(pre_s, pre_y, static_cast<float>(e.threshold));
  int64_t detected = 0, false_alarms = 0;
  std::vector<double> leads;
  for (size_t k = 0; k < sel.traces.size(); ++k) {
    const Trace& t = *sel.traces[k];
    int64_t first = -1;
    for (int64_t i = 0; i < t.tokens && first < 0; ++i) {
      if (per_trace[k][i] > e.threshold) first = i;
    }
    if (t.catastrophic) {
      ++e.catastrophic_traces;
      if (first >= 0 && (t.onset < 0 || first < t.onset)) {
        ++detected;
        leads.push_back(static_cast<double>(t.onset - first));
      }
    } else {
      ++e.clean_traces;
      false_alarms += first >= 0;
    }
  }
  if (e.catastrophic_traces) e.trace_detection = double(detected) / e.catastrophic_traces;
  if (e.clean_traces) e.trace_false_alarm = double(false_alarms) / e.clean_traces;
  if (!leads.empty()) {
    e.lead_time_mean = std::accumulate(leads.begin(), leads.end(), 0.0) / leads.size();
    std::sort(leads.begin(), leads.end());
    e.lead_time_median = leads[leads.size() / 2];
  }
  return e;
}

nlohmann::json EvalJson(const Eval& e) {
  auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  return {{"auroc", num(e.auroc)}, {"auroc_pre_onset", num(e.auroc_pre)}, {"recall_at_fpr", num(e.recall_at_fpr)},
          {"threshold", e.threshold}, {"trace_detection_rate", num(e.trace_detection)},
          {"trace_false_alarm_rate", num(e.trace_false_alarm)}, {"lead_time_mean", num(e.lead_time_mean)},
          {"lead_time_median", num(e.lead_time_median)}, {"positive_tokens", e.positives},
          {"negative_tokens", e.negatives}, {"catastrophic_traces", e.catastrophic_traces},
          {"clean_traces", e.clean_traces}};
}

std::string Row(const std::string& name, const Eval& e) {
  return absl::StrFormat("| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f | %d / %d |\n", name, e.auroc, e.auroc_pre,
                         e.recall_at_fpr, e.trace_detection, e.trace_false_alarm, e.lead_time_median,
                         e.catastrophic_traces, e.clean_traces);
}

Selection Select(const std::vector<Trace>& traces, const std::map<std::string, PromptSet>& split, PromptSet set,
                 const std::function<bool(const Trace&)>& keep = nullptr) {
  Selection s;
  for (const Trace& t : traces) {
    if (split.at(t.prompt_id) == set && (!keep || keep(t))) s.traces.push_back(&t);
  }
  return s;
}

std::string StaticCfrTable(const std::vector<Trace>& traces) {
  std::map<std::pair<std::string, double>, std::pair<int64_t, int64_t>> cfr;  // (c, r) -> (catastrophic, n)
  std::map<std::pair<std::string, double>, int64_t> correct;
  for (const Trace& t : traces) {
    auto& [k, n] = cfr[{t.compressor, t.ratio}];
    k += t.catastrophic;
    ++n;
    correct[{t.compressor, t.ratio}] += t.correct;
  }
  std::string md = "| compressor | ratio | traces | CFR [95% CI] | accuracy |\n| --- | --- | --- | --- | --- |\n";
  for (const auto& [key, v] : cfr) {
    const RateCI ci = WilsonInterval(v.first, v.second);
    absl::StrAppendFormat(&md, "| %s | %.3g | %d | %.3f [%.3f, %.3f] | %.3f |\n", key.first, key.second, v.second,
                          ci.rate, ci.lo, ci.hi, double(correct[key]) / v.second);
  }
  return md;
}

}  // namespace

bool TokenLabel(const Trace& t, int64_t token, int horizon) {
  return t.catastrophic && t.onset >= 0 && token >= t.onset - horizon;
}
bool PreOnset(const Trace& t, int64_t token) { return !t.catastrophic || t.onset < 0 || token < t.onset; }

std::map<std::string, PromptSet> SplitPrompts(const std::vector<Trace>& traces, uint64_t seed, double val_fraction,
                                              double test_fraction) {
  std::map<std::string, bool> fails;
  for (const Trace& t : traces) fails[t.prompt_id] = fails[t.prompt_id] || t.catastrophic;
  std::map<std::string, PromptSet> out;
  for (bool stratum : {false, true}) {
    std::vector<std::string> ids;
    for (const auto& [id, f] : fails) {
      if (f == stratum) ids.push_back(id);
    }
    std::sort(ids.begin(), ids.end(), [&](const std::string& a, const std::string& b) { return Hash(a, seed) < Hash(b, seed); });
    const size_t n_test = static_cast<size_t>(std::round(test_fraction * ids.size()));
    const size_t n_val = static_cast<size_t>(std::round(val_fraction * ids.size()));
    for (size_t i = 0; i < ids.size(); ++i) {
      out[ids[i]] = i < n_test ? PromptSet::kTest : (i < n_test + n_val ? PromptSet::kVal : PromptSet::kTrain);
    }
  }
  return out;
}

absl::Status TrainPredictor(const PredictorOptions& o, std::string* summary) {
  int64_t nf = 0;
  KVG_ASSIGN_OR_RETURN(std::vector<Trace> traces, LoadTraces(o.traces_dir, &nf));
  if (traces.empty()) return absl::FailedPreconditionError(absl::StrCat(o.traces_dir, ": no complete shards"));
  const auto split = SplitPrompts(traces, o.seed);
  std::filesystem::create_directories(o.out_dir);
  nlohmann::json report = {{"traces_dir", o.traces_dir}, {"horizon", o.horizon}, {"seed", o.seed},
                           {"target_fpr", o.target_fpr}, {"traces", traces.size()}};
  std::string md = absl::StrCat("# Hazard predictor report\n\nTraces: ", traces.size(), " from `", o.traces_dir,
                                "`; horizon H = ", o.horizon, "; prompt-level split (seed ", o.seed,
                                ", 60/20/20, stratified by whether the prompt ever fails).\n\n",
                                "## Static CFR of the sweep (all prompts)\n\n", StaticCfrTable(traces),
                                "\n## Ablations (test prompts)\n\n",
                                "| features | AUROC | AUROC pre-onset | recall @5% FPR (pre-onset tokens) | trace detection | "
                                "trace false alarms | median lead (tokens) | catastrophic / clean traces |\n"
                                "| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  PlotSpec roc{.title = "Hazard ROC on test prompts (pre-onset tokens)", .x_label = "FPR", .y_label = "TPR"};
  for (const std::string ablation : {"full", "no_ratio", "no_repetition", "logit_only"}) {
    KVG_ASSIGN_OR_RETURN(FeatureSchema schema, FeatureSchema::ForAblation(ablation));
    guard::Dataset train = BuildDataset(Select(traces, split, PromptSet::kTrain), schema, nf, o.horizon);
    guard::Dataset val = BuildDataset(Select(traces, split, PromptSet::kVal), schema, nf, o.horizon);
    KVG_ASSIGN_OR_RETURN(auto model, guard::HazardModel::Train(train, o.params, &val));
    const Selection test = Select(traces, split, PromptSet::kTest);
    const Eval e = Evaluate(*model, test, schema, nf, o.horizon, o.target_fpr);
    report["ablations"][ablation] = EvalJson(e);
    report["ablations"][ablation]["columns"] = schema.size();
    md += Row(absl::StrCat(ablation, " (", schema.size(), ")"), e);
    if (ablation == "full") {
      KVG_RETURN_IF_ERROR(model->Save(o.out_dir + "/hazard.json"));
      report["threshold_at_target_fpr"] = e.threshold;
    }
    // ROC from the pre-onset tokens.
    std::vector<float> s;
    std::vector<uint8_t> y;
    for (const Trace* t : test.traces) {
      guard::Dataset one = BuildDataset({.traces = {t}}, schema, nf, o.horizon);
      auto p = model->PredictBatch(one.features);
      for (int64_t i = 0; p.ok() && i < t->tokens; ++i) {
        if (PreOnset(*t, i)) s.push_back((*p)[i]), y.push_back(TokenLabel(*t, i, o.horizon));
      }
    }
    PlotSeries series{.name = ablation};
    for (auto [x, v] : RocCurve(s, y)) series.x.push_back(x), series.y.push_back(v);
    roc.series.push_back(series);
  }
  md += "\n## Leave-one-compressor-out (full features; train on the other compressors' train prompts, test on "
        "this compressor's test prompts; uncompressed is never a fold)\n\n| held-out compressor | AUROC | AUROC "
        "pre-onset | recall @5% FPR | trace detection | trace false alarms | median lead | catastrophic / clean |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
  std::set<std::string> compressors;
  for (const Trace& t : traces) if (t.compressor != "none") compressors.insert(t.compressor);
  const FeatureSchema full = FeatureSchema::All();
  for (const std::string& held : compressors) {
    auto others = [&](const Trace& t) { return t.compressor != held; };
    auto only = [&](const Trace& t) { return t.compressor == held; };
    guard::Dataset train = BuildDataset(Select(traces, split, PromptSet::kTrain, others), full, nf, o.horizon);
    guard::Dataset val = BuildDataset(Select(traces, split, PromptSet::kVal, others), full, nf, o.horizon);
    KVG_ASSIGN_OR_RETURN(auto model, guard::HazardModel::Train(train, o.params, &val));
    const Eval e = Evaluate(*model, Select(traces, split, PromptSet::kTest, only), full, nf, o.horizon, o.target_fpr);
    report["loco"][held] = EvalJson(e);
    md += Row(held, e);
  }
  KVG_RETURN_IF_ERROR(WriteSvgPlot(roc, o.out_dir + "/roc.svg"));
  KVG_RETURN_IF_ERROR(WriteTextFile(o.out_dir + "/report.json", report.dump(2)));
  KVG_RETURN_IF_ERROR(WriteTextFile(o.out_dir + "/report.md", md));
  if (summary) *summary = md;
  return absl::OkStatus();
}

}  // namespace kvguard::research
