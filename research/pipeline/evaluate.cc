#include "research/pipeline/evaluate.h"

#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/child_process.h"
#include "common/status_macros.h"
#include "common/svg_plot.h"
#include "guard_sidecar/controller.h"
#include "guard_sidecar/hazard_model.h"
#include "research/pipeline/admission.h"
#include "research/pipeline/frontier.h"
#include "research/pipeline/predictor.h"
#include "research/pipeline/traces.h"
#include "research/problems.h"
#include "research/prompt_set.h"
#include "research/stats.h"
#include "services/client/generation_client.h"

namespace kvguard::research {
namespace {

using Key = std::pair<std::string, double>;  // (compressor, ratio)

struct Counts {
  int64_t n = 0, catastrophic = 0, correct = 0;
  int64_t false_positive = 0, clean = 0;  // guarded: clean traces that left NORMAL
  double saved = 0;                       // summed bytes saved
  double saved_fraction = 0;              // summed per-run saved / uncompressed
};

// Replays the controller on one trace; returns the first step outside NORMAL (-1: never).
int64_t FirstEscalation(const Trace& t, const std::vector<float>& hazard,
                        const guard::ControllerConfig& config) {
  auto controller = guard::ModeController(config);
  for (int64_t i = 0; i < t.tokens; ++i) {
    guard::Decision d = controller.Step(
        {.hazard = hazard[i], .position = static_cast<int32_t>(i), .requested_ratio = t.ratio});
    if (d.mode != v1::MODE_NORMAL) return i;
  }
  return -1;
}

struct Offline {
  std::map<Key, Counts> static_counts, guarded_counts;
  double fpr = 0;      // pooled over every configuration's clean traces
  double max_fpr = 0;  // the worst configuration's (>= 10 clean traces)
};

Offline Simulate(const std::vector<const Trace*>& traces,
                 const std::map<const Trace*, std::vector<float>>& hazards,
                 const guard::ControllerConfig& config) {
  Offline o;
  int64_t clean = 0, fp = 0;
  for (const Trace* t : traces) {
    if (t->compressor == "none") continue;
    const Key key{t->compressor, t->ratio};
    const int64_t first = FirstEscalation(*t, hazards.at(t), config);
    Counts& s = o.static_counts[key];
    Counts& g = o.guarded_counts[key];
    ++s.n;
    ++g.n;
    s.catastrophic += t->catastrophic;
    const bool averted = t->catastrophic && first >= 0 && first < t->onset;
    g.catastrophic += t->catastrophic && !averted;
    if (!t->catastrophic) {
      ++clean;
      fp += first >= 0;
      ++g.clean;
      g.false_positive += first >= 0;
    }
  }
  o.fpr = clean ? double(fp) / clean : 0;
  for (const auto& [key, g] : o.guarded_counts) {
    if (g.clean >= 10) o.max_fpr = std::max(o.max_fpr, double(g.false_positive) / g.clean);
  }
  return o;
}

absl::StatusOr<guard::ControllerConfig> TuneThresholds(
    const std::vector<const Trace*>& val, const std::map<const Trace*, std::vector<float>>& hazards,
    guard::ControllerConfig base, double target_fpr, bool per_config, std::string* log) {
  guard::ControllerConfig best = base;
  bool found = false;
  for (double tau = 0.05; tau <= 0.951; tau += 0.05) {
    guard::ControllerConfig c = base;
    c.alert.enter = tau;
    c.alert.exit = 0.7 * tau;
    c.safe.enter = std::min(0.97, tau + 0.2);
    c.safe.exit = 0.7 * c.safe.enter;
    c.recovery.enter = c.safe.enter;  // restore as soon as SAFE is warranted
    if (!c.Validate().ok()) continue;
    const Offline o = Simulate(val, hazards, c);
    int64_t cat = 0, left = 0;
    for (const auto& [k, v] : o.static_counts) cat += v.catastrophic;
    for (const auto& [k, v] : o.guarded_counts) left += v.catastrophic;
    absl::StrAppendFormat(log, "| %.2f | %.3f | %.3f | %d / %d |\n", tau, o.fpr, o.max_fpr,
                          cat - left, cat);
    // The FPR bound holds at every requested ratio, not only pooled: at high
    // ratios hazards run higher, and a pooled 5% can hide 13% there.
    if ((per_config ? o.max_fpr : o.fpr) <= target_fpr) {
      best = c;
      found = true;
      break;  // the lowest threshold within the FPR budget catches the most
    }
  }
  if (!found) {
    best.alert.enter = 0.95;
    best.alert.exit = 0.66;
    best.safe.enter = 0.97;
    best.safe.exit = 0.68;
    best.recovery.enter = 0.99;
  }
  return best;
}

struct LiveResult {
  std::map<Key, Counts> by_mode[3];   // static, guarded, guarded without RECOVERY
  std::vector<PolicyRecord> records;  // one per (prompt, mode, config): the frontier's input
  int64_t errors = 0;                 // runs that ended with an RPC error (not counted in CFR)
  std::string first_error;
};

constexpr const char* kArmPrefix[3] = {"static", "guarded", "guarded_norec"};

// One live run as a frontier record. Integrated savings: the bytes each step
// held over what the sequence would hold uncompressed at that step (bytes per
// token from the completion's held + saved bytes, times the tokens so far).
PolicyRecord LiveRecord(const Problem& p, const Key& key, int mode,
                        const client::GenerateOutcome& out, double held_byte_steps,
                        const std::vector<int64_t>& steps) {
  const auto& c = out.complete;
  PolicyRecord r{.prompt_id = p.id,
                 .compressor = key.first,
                 .arm = absl::StrFormat("%s@%g", kArmPrefix[mode], key.second),
                 .requested_ratio = key.second,
                 .catastrophic = c.catastrophes().looping() || c.catastrophes().non_termination(),
                 .looped = c.catastrophes().looping(),
                 .non_terminated = c.catastrophes().non_termination(),
                 .correct = c.catastrophes().answered() && c.catastrophes().answer() == p.answer,
                 .tokens = static_cast<int64_t>(out.token_ids.size()),
                 .fail_safe_events = static_cast<int64_t>(c.fail_safe_events())};
  const double uncompressed = static_cast<double>(c.kv_bytes_saved() + c.kv_bytes());
  r.savings_end = uncompressed > 0 ? static_cast<double>(c.kv_bytes_saved()) / uncompressed : 0.0;
  const double total_tokens =
      static_cast<double>(c.usage().prompt_tokens() + c.usage().completion_tokens());
  double full_byte_steps = 0;
  if (total_tokens > 0) {
    const double per_token = uncompressed / total_tokens;
    for (int64_t s : steps)
      full_byte_steps += per_token * static_cast<double>(c.usage().prompt_tokens() + s);
  }
  r.savings_integrated =
      full_byte_steps > 0 ? 1.0 - held_byte_steps / full_byte_steps : r.savings_end;
  for (const auto& [m, n] : c.mode_steps()) r.mode_steps[m] = n;
  return r;
}

absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::string& bin,
                                                    std::vector<std::string> args,
                                                    std::string* address) {
  auto p = std::make_unique<ChildProcess>(bin, args);
  auto port = p->WaitFor("listening on 127\\.0\\.0\\.1:([0-9]+)", std::chrono::seconds(60));
  if (!port) return absl::InternalError(absl::StrCat(bin, " did not start: ", p->output()));
  *address = "127.0.0.1:" + *port;
  return p;
}

// One live request: the problem at (compressor, ratio), guarded or not, with
// the sweep's options for that compressor so live runs use the same settings.
v1::GenerateRequest LiveRequest(const EvaluateOptions& o, const Problem& p, const Key& key,
                                bool guarded, const std::vector<std::string>& stop_strings,
                                const std::vector<std::string>& compressor_options) {
  v1::GenerateRequest r;
  r.set_text(p.prompt);
  r.mutable_stopping()->set_max_new_tokens(o.max_new_tokens);
  if (o.repetition_penalty != 1.0)
    r.mutable_sampling()->mutable_repetition_penalty()->set_value(
        static_cast<float>(o.repetition_penalty));
  r.mutable_sampling()->set_no_repeat_ngram(static_cast<uint32_t>(o.no_repeat_ngram));
  for (const std::string& stop : stop_strings) r.mutable_stopping()->add_stop(stop);
  r.mutable_compression()->set_compressor(key.first);
  for (const std::string& kv : CompressorOptionsFor(key.first, compressor_options)) {
    const size_t eq = kv.find('=');
    if (eq != std::string::npos)
      (*r.mutable_compression()->mutable_options())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  r.mutable_compression()->mutable_ratio()->set_value(key.second);
  r.mutable_compression()->mutable_guard()->set_value(guarded);
  r.set_gold_answer(absl::StrCat(p.answer));
  return r;
}

// A run that left NORMAL at some step (any guard intervention, a restart included).
bool LeftNormal(const PolicyRecord& r) {
  for (const auto& [mode, steps] : r.mode_steps) {
    if (mode != "normal" && steps > 0) return true;
  }
  return false;
}

void Tally(Counts& k, const PolicyRecord& r, double saved_bytes) {
  ++k.n;
  k.catastrophic += r.catastrophic;
  k.correct += r.correct;
  k.saved += saved_bytes;
  k.saved_fraction += r.savings_end;
}

// A kvguard-guard with `controller_path` and a kvguard-server guarded by it, on loopback.
struct LiveStack {
  std::unique_ptr<ChildProcess> guard, server;
  std::string address;  // the server's
};

absl::StatusOr<LiveStack> SpawnStack(const EvaluateOptions& o, const std::string& controller_path) {
  LiveStack s;
  std::string guard_addr;
  KVG_ASSIGN_OR_RETURN(s.guard,
                       Spawn(o.bin_dir + "/kvguard-guard",
                             {"--listen", "127.0.0.1:0", "--metrics_listen", "", "--model",
                              o.predictor_dir + "/hazard.json", "--config", controller_path},
                             &guard_addr));
  KVG_ASSIGN_OR_RETURN(
      s.server, Spawn(o.bin_dir + "/kvguard-server",
                      {"--model", o.model_dir, "--listen", "127.0.0.1:0", "--metrics_listen", "",
                       "--max_concurrent", std::to_string(o.concurrency), "--guard_deadline_ms",
                       "500", "--guard", guard_addr},
                      &s.address));
  return s;
}

absl::Status RunLive(const EvaluateOptions& o, const std::vector<Problem>& problems,
                     const std::vector<std::string>& stop_strings,
                     const std::vector<std::string>& compressor_options,
                     const std::set<Key>& configs, const std::string& controller_path,
                     const std::string& no_recovery_path, LiveResult& out,
                     const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t total = static_cast<int64_t>(configs.size() * 3 * problems.size());
  int64_t done = 0;
  // Static and guarded runs share the first stack; guarded without RECOVERY runs on the second.
  KVG_ASSIGN_OR_RETURN(LiveStack stack, SpawnStack(o, controller_path));
  KVG_ASSIGN_OR_RETURN(LiveStack no_recovery, SpawnStack(o, no_recovery_path));
  const std::string& server_addr = stack.address;
  const std::string& server2_addr = no_recovery.address;
  std::mutex mu;
  // Per config, whether each prompt's static run was clean: a guarded run
  // leaving NORMAL is a false positive only when static compression would
  // not have failed (a clean guarded run may be clean because it escalated).
  std::map<Key, std::vector<int8_t>> static_clean;
  for (const Key& key : configs) {
    static_clean[key].assign(problems.size(), -1);
    for (int mode = 0; mode < 3; ++mode) {
      const std::string addr = mode == 2 ? server2_addr : server_addr;
      std::vector<std::future<void>> jobs;
      std::atomic<size_t> next{0};
      for (int w = 0; w < o.concurrency; ++w) {
        jobs.push_back(std::async(std::launch::async, [&, mode] {
          client::GenerationClient client(addr);
          for (size_t i = next++; i < problems.size(); i = next++) {
            const v1::GenerateRequest r =
                LiveRequest(o, problems[i], key, mode != 0, stop_strings, compressor_options);
            double held_byte_steps = 0;
            std::vector<int64_t> steps;
            auto res = client.Generate(r, [&](const v1::TokenChunk& chunk) {
              held_byte_steps += static_cast<double>(chunk.state().kv_bytes());
              steps.push_back(static_cast<int64_t>(chunk.state().step()) + 1);
            });
            std::lock_guard<std::mutex> lock(mu);
            if (progress) progress(++done, total);
            if (!res.ok()) {
              if (out.errors++ == 0) out.first_error = std::string(res.status().message());
              continue;
            }
            const PolicyRecord& rec = out.records.emplace_back(
                LiveRecord(problems[i], key, mode, *res, held_byte_steps, steps));
            Counts& k = out.by_mode[mode][key];
            Tally(k, rec, static_cast<double>(res->complete.kv_bytes_saved()));
            if (mode == 0) static_clean[key][i] = !rec.catastrophic;
            if (mode != 0 && static_clean[key][i] == 1) {
              ++k.clean;
              k.false_positive += LeftNormal(rec);
            }
          }
        }));
      }
      for (auto& j : jobs) j.get();
    }
  }
  return absl::OkStatus();
}

std::string CfrCell(const Counts& c) {
  const RateCI ci = WilsonInterval(c.catastrophic, c.n);
  return absl::StrFormat("%.3f [%.3f, %.3f]", ci.rate, ci.lo, ci.hi);
}

// ---- the evaluation's steps: load, tune, simulate, run live, report ----------

// The traces with their hazards, split into validation and test prompts.
struct Inputs {
  std::vector<Trace> traces;
  nlohmann::json manifest;                 // the sweep's: prompt set, compressor options, features
  std::vector<std::string> feature_names;  // the traces' feature columns (manifest)
  std::map<const Trace*, std::vector<float>> hazards;
  std::vector<const Trace*> val, test;
};

absl::StatusOr<std::unique_ptr<Inputs>> LoadInputs(const EvaluateOptions& o) {
  auto in = std::make_unique<Inputs>();
  int64_t nf = 0;
  KVG_ASSIGN_OR_RETURN(in->traces, LoadTraces(o.traces_dir, &nf));
  KVG_ASSIGN_OR_RETURN(in->manifest, ReadManifest(o.traces_dir));
  in->feature_names = in->manifest.value("feature_names", std::vector<std::string>{});
  KVG_ASSIGN_OR_RETURN(auto model, guard::HazardModel::Load(o.predictor_dir + "/hazard.json"));
  KVG_ASSIGN_OR_RETURN(auto schema, guard::FeatureSchema::FromNames(model->feature_names()));
  const auto split = SplitPrompts(in->traces, o.seed);
  for (const Trace& t : in->traces) {
    KVG_ASSIGN_OR_RETURN(auto h, model->PredictBatch(schema.ProjectRows(t.features)));
    in->hazards[&t] = std::move(h);
    if (split.at(t.prompt_id) == PromptSet::kVal) in->val.push_back(&t);
    if (split.at(t.prompt_id) == PromptSet::kTest) in->test.push_back(&t);
  }
  return in;
}

// The tuned controller and its copy without RECOVERY, written where the live guards read them.
struct Controllers {
  guard::ControllerConfig tuned;       // with the tuned admission rules (below)
  std::vector<TunedPolicy> admission;  // probe-and-restart, tuned on the validation traces
  std::string path, no_recovery_path;
  std::string tuning_table;  // markdown: one row per alert threshold tried
};

absl::StatusOr<Controllers> TuneControllers(const EvaluateOptions& o, const Inputs& in) {
  guard::ControllerConfig base;
  if (!o.controller_config.empty()) {
    KVG_ASSIGN_OR_RETURN(base, guard::ControllerConfig::Load(o.controller_config));
  }
  Controllers c;
  c.tuning_table =
      "| alert threshold | val FPR (pooled) | val FPR (worst configuration) | val catastrophes "
      "averted |\n"
      "| --- | --- | --- | --- |\n";
  KVG_ASSIGN_OR_RETURN(c.tuned, TuneThresholds(in.val, in.hazards, base, o.target_fpr,
                                               o.fpr_per_config, &c.tuning_table));
  if (o.admission) {
    // The live guard restarts what the offline policy would (min_requested_ratio = its high ratio).
    c.admission = TuneProbeRestart(in.val, in.hazards, in.feature_names, o.probe_tokens);
    for (const TunedPolicy& t : c.admission) {
      c.tuned.admission[t.policy.compressor] = {.probe_tokens = t.policy.probe_tokens,
                                                .threshold = t.policy.threshold,
                                                .min_requested_ratio = t.policy.high_ratio,
                                                .restart_ratio = t.policy.low_ratio};
    }
  }
  std::filesystem::create_directories(o.out_dir);
  c.path = o.out_dir + "/controller.json";
  KVG_RETURN_IF_ERROR(WriteTextFile(c.path, c.tuned.ToJson().dump(2)));
  guard::ControllerConfig no_recovery = c.tuned;
  no_recovery.recovery.enabled = false;
  c.no_recovery_path = o.out_dir + "/controller_no_recovery.json";
  KVG_RETURN_IF_ERROR(WriteTextFile(c.no_recovery_path, no_recovery.ToJson().dump(2)));
  return c;
}

// The test prompts rebuilt from the sweep's manifest, through a real server and guard.
absl::Status RunLiveOnTestPrompts(const EvaluateOptions& o, const nlohmann::json& manifest,
                                  const std::set<std::string>& test_prompts,
                                  const std::set<Key>& configs, const Controllers& c,
                                  LiveResult& live,
                                  const std::function<void(int64_t, int64_t)>& progress) {
  KVG_ASSIGN_OR_RETURN(PromptSetSpec spec,
                       PromptSetFromJson(manifest.value("prompt_set", nlohmann::json())));
  KVG_ASSIGN_OR_RETURN(auto all, LoadPrompts(spec));
  std::vector<Problem> held_out;
  for (auto& p : all) {
    if (test_prompts.count(p.id)) held_out.push_back(std::move(p));
  }
  const auto compressor_options = manifest.value("compressor_options", std::vector<std::string>{});
  EvaluateOptions as_swept = o;
  as_swept.repetition_penalty = manifest.value("repetition_penalty", 1.0);
  as_swept.no_repeat_ngram = manifest.value("no_repeat_ngram", 0);
  return RunLive(as_swept, held_out, spec.StopStrings(), compressor_options, configs, c.path,
                 c.no_recovery_path, live, progress);
}

double Rate(int64_t k, int64_t n) {
  return static_cast<double>(k) / static_cast<double>(std::max<int64_t>(1, n));
}

// The live columns of one configuration's row.
struct LiveRow {
  double static_cfr = NAN, guarded_cfr = NAN, norec_cfr = NAN, kept = NAN, fpr = NAN;
  std::string md;
  nlohmann::json json;
};

LiveRow LiveColumns(const LiveResult& live, const Key& key) {
  const Counts& a = live.by_mode[0].count(key) ? live.by_mode[0].at(key) : Counts{};
  const Counts& b = live.by_mode[1].count(key) ? live.by_mode[1].at(key) : Counts{};
  const Counts& c = live.by_mode[2].count(key) ? live.by_mode[2].at(key) : Counts{};
  LiveRow r;
  r.static_cfr = Rate(a.catastrophic, a.n);
  r.guarded_cfr = Rate(b.catastrophic, b.n);
  r.norec_cfr = Rate(c.catastrophic, c.n);
  // Savings kept compares the share of KV each run saves (guarded mean over
  // static mean), not summed bytes: a rescued run that ends at its answer
  // instead of looping to max tokens is shorter, which must not count as lost
  // savings. The byte-sum ratio is in the JSON too.
  const double static_share = a.saved_fraction / static_cast<double>(std::max<int64_t>(1, a.n));
  const double guarded_share = b.saved_fraction / static_cast<double>(std::max<int64_t>(1, b.n));
  r.kept = a.saved_fraction > 0 ? guarded_share / static_share : NAN;
  const double kept_bytes = a.saved > 0 ? b.saved / a.saved : NAN;
  r.fpr = b.clean ? Rate(b.false_positive, b.clean) : NAN;
  const RateCI d = NewcombeDifference(a.catastrophic, a.n, b.catastrophic, b.n);
  const double relative = r.static_cfr > 0 ? (r.static_cfr - r.guarded_cfr) / r.static_cfr : NAN;
  // The bar of issue 5: CFR at least halved, FPR <= 5%, >= 70% of the savings kept.
  const bool met = r.static_cfr > 0 && relative >= 0.5 && !(r.fpr > 0.05) && r.kept >= 0.7;
  r.md = absl::StrFormat(
      " %s | %s | %.3f [%.3f, %.3f] | %.2f | %s | %.2f | %.3f | %.2f / %.2f | %s |", CfrCell(a),
      CfrCell(b), d.rate, d.lo, d.hi, relative, CfrCell(c), r.kept, r.fpr, Rate(a.correct, a.n),
      Rate(b.correct, b.n), r.static_cfr == 0 ? "n/a (no static failures)" : (met ? "yes" : "no"));
  r.json = {{"static_cfr", r.static_cfr},
            {"guarded_cfr", r.guarded_cfr},
            {"guarded_no_recovery_cfr", r.norec_cfr},
            {"savings_kept", r.kept},
            {"fpr", r.fpr},
            {"reduction", d.rate},
            {"reduction_ci", {d.lo, d.hi}},
            {"relative_reduction", relative},
            {"goal_met", met},
            {"n", a.n},
            {"savings_kept_bytes", kept_bytes},
            {"saved_fraction_static", static_share},
            {"saved_fraction_guarded", guarded_share}};
  return r;
}

constexpr char kDefinitions[] =
    "\nDefinitions: CFR = share of traces that loop or do not terminate (no answer within max "
    "tokens); "
    "reduction = static minus guarded CFR (live, same prompts), Newcombe 95% CI; relative "
    "reduction = reduction / "
    "static CFR; savings kept = mean share of the KV saved at completion (saved / uncompressed "
    "bytes per run), "
    "guarded / static (summed bytes in evaluation.json: savings_kept_bytes); live FPR = share of "
    "prompts whose static "
    "run was clean but whose guarded run left NORMAL; offline FPR = the same on the test traces "
    "with the controller "
    "replayed; goal met = relative reduction >= 0.5, live FPR <= 0.05 and savings kept >= 0.70. "
    "Per-prompt records "
    "of every live run: records.jsonl (`kvguard frontier --records` reads them).\n";

std::string ReportHeader(const EvaluateOptions& o, size_t test_prompts, const Controllers& c,
                         const Offline& off) {
  std::string md = absl::StrCat(
      "# CFR vs budget: static vs guarded\n\nHeld-out prompts: ", test_prompts,
      " (prompt-level split, seed ", o.seed,
      "). Controller thresholds tuned on the validation prompts for FPR <= ", o.target_fpr,
      o.fpr_per_config ? " in every configuration (compressor, ratio) with >= 10 clean traces"
                       : " pooled over all configurations (--fpr-scope pooled)",
      ":\n\n", c.tuning_table, "\nChosen: alert.enter = ", c.tuned.alert.enter,
      ", safe.enter = ", c.tuned.safe.enter, ", recovery.enter = ", c.tuned.recovery.enter, " (",
      c.path, ").\n\nOffline FPR on test traces: ",
      absl::StrFormat("%.3f pooled, %.3f in the worst configuration", off.fpr, off.max_fpr),
      "\n\n| compressor | ratio | static CFR (traces) | guarded CFR offline |");
  if (o.live) {
    md +=
        " static CFR live | guarded CFR live | reduction [95% CI] | relative reduction | guarded "
        "w/o RECOVERY |"
        " savings kept | live FPR | acc static / guarded | goal met |";
  }
  md += "\n| --- | --- | --- | --- |";
  if (o.live) md += " --- | --- | --- | --- | --- | --- | --- | --- | --- |";
  return md + "\n";
}

absl::Status WriteReport(const EvaluateOptions& o, const std::set<Key>& configs,
                         size_t test_prompts, const Controllers& c, const Offline& off,
                         LiveResult& live, std::string* summary) {
  std::string md = ReportHeader(o, test_prompts, c, off);
  nlohmann::json rows = nlohmann::json::array();
  std::string csv =
      "compressor,ratio,static_cfr_traces,guarded_cfr_offline,static_cfr_live,guarded_cfr_live,"
      "guarded_norec_cfr_live,savings_kept,live_fpr\n";
  std::map<std::string, PlotSpec> plots;
  for (const Key& key : configs) {
    const Counts& s = off.static_counts.at(key);
    const Counts& g = off.guarded_counts.at(key);
    absl::StrAppendFormat(&md, "| %s | %.3g | %s | %s |", key.first, key.second, CfrCell(s),
                          CfrCell(g));
    nlohmann::json row = {{"compressor", key.first},
                          {"ratio", key.second},
                          {"static_cfr_traces", Rate(s.catastrophic, s.n)},
                          {"guarded_cfr_offline", Rate(g.catastrophic, g.n)}};
    LiveRow l;
    if (o.live) {
      l = LiveColumns(live, key);
      md += l.md;
      row["live"] = l.json;
    }
    md += "\n";
    rows.push_back(row);
    absl::StrAppendFormat(&csv, "%s,%g,%g,%g,%g,%g,%g,%g,%g\n", key.first, key.second,
                          row["static_cfr_traces"].get<double>(),
                          row["guarded_cfr_offline"].get<double>(), l.static_cfr, l.guarded_cfr,
                          l.norec_cfr, l.kept, l.fpr);
    PlotSpec& p = plots[key.first];
    if (p.series.empty()) {
      p = {.title = "CFR vs ratio: " + key.first,
           .x_label = "compression ratio (fraction of KV removed)",
           .y_label = "CFR"};
      p.series = {{.name = "static (sweep)"}, {.name = "guarded (offline)"}};
      if (o.live) {
        p.series.push_back({.name = "static (live)"});
        p.series.push_back({.name = "guarded (live)"});
        p.series.push_back({.name = "guarded w/o RECOVERY (live)"});
      }
    }
    const std::vector<double> ys = {row["static_cfr_traces"].get<double>(),
                                    row["guarded_cfr_offline"].get<double>(), l.static_cfr,
                                    l.guarded_cfr, l.norec_cfr};
    for (size_t i = 0; i < p.series.size(); ++i) {
      p.series[i].x.push_back(key.second);
      p.series[i].y.push_back(ys[i]);
    }
  }
  if (o.live) {
    absl::StrAppend(
        &md, "\nLive runs that failed with an RPC error (left out of the rates): ", live.errors,
        live.errors ? absl::StrCat(" (first: ", live.first_error, ")") : "", "\n");
  }
  md += kDefinitions;
  for (const auto& [name, plot] : plots) {
    KVG_RETURN_IF_ERROR(WriteSvgPlot(plot, o.out_dir + "/cfr_vs_ratio_" + name + ".svg"));
  }
  if (o.live) {
    // Per-prompt records of every live run, in a fixed order: `kvguard frontier` reads them.
    std::sort(live.records.begin(), live.records.end(),
              [](const PolicyRecord& a, const PolicyRecord& b) {
                return std::tie(a.compressor, a.arm, a.prompt_id) <
                       std::tie(b.compressor, b.arm, b.prompt_id);
              });
    KVG_RETURN_IF_ERROR(WriteRecords(o.out_dir + "/records.jsonl", live.records));
  }
  KVG_RETURN_IF_ERROR(WriteTextFile(o.out_dir + "/evaluation.md", md));
  KVG_RETURN_IF_ERROR(WriteTextFile(o.out_dir + "/evaluation.csv", csv));
  KVG_RETURN_IF_ERROR(WriteTextFile(
      o.out_dir + "/evaluation.json",
      nlohmann::json{{"rows", rows}, {"offline_fpr", off.fpr}, {"controller", c.tuned.ToJson()}}
          .dump(2)));
  if (summary) *summary = md;
  return absl::OkStatus();
}

// Probe-and-restart admission policies (admission.h), tuned on the validation
// traces and applied once to the test traces: their records, with the test
// prompts' static records, for `kvguard frontier --records`.
absl::Status WriteAdmissionPolicies(const EvaluateOptions& o, const Inputs& in,
                                    const std::vector<TunedPolicy>& tuned, std::string* summary) {
  std::vector<PolicyRecord> records;
  for (const Trace* t : in.test) records.push_back(StaticRecord(*t, in.feature_names));
  std::string md = absl::StrCat(
      "\n## Probe-and-restart admission (offline, exact from the traces)\n\nDecode ",
      o.probe_tokens,
      " tokens at the high ratio; restart at the low ratio when the hazard reaches the threshold. "
      "Tuned on the validation prompts (largest CFR gap below their static hull); the test "
      "prompts' "
      "records are in admission_records.jsonl (`kvguard frontier --records`).\n\n"
      "| compressor | policy | threshold | val savings | val CFR | val gap below the hull |\n"
      "| --- | --- | --- | --- | --- | --- |\n");
  if (tuned.empty()) md += "| (none below the validation hull) | | | | | |\n";
  nlohmann::json policies = nlohmann::json::array();
  for (const TunedPolicy& t : tuned) {
    absl::StrAppendFormat(&md, "| %s | %s | %.2f | %.3f | %.3f | %+.3f |\n", t.policy.compressor,
                          t.policy.Arm(), t.policy.threshold, t.val_savings, t.val_cfr, t.val_gap);
    policies.push_back({{"compressor", t.policy.compressor},
                        {"arm", t.policy.Arm()},
                        {"high_ratio", t.policy.high_ratio},
                        {"low_ratio", t.policy.low_ratio},
                        {"probe_tokens", t.policy.probe_tokens},
                        {"threshold", t.policy.threshold},
                        {"val_gap", t.val_gap},
                        {"val_savings", t.val_savings},
                        {"val_cfr", t.val_cfr}});
    auto mine = ProbeRestartRecords(t.policy, in.test, in.hazards, in.feature_names);
    records.insert(records.end(), mine.begin(), mine.end());
  }
  KVG_RETURN_IF_ERROR(WriteRecords(o.out_dir + "/admission_records.jsonl", records));
  KVG_RETURN_IF_ERROR(WriteTextFile(o.out_dir + "/admission_policies.json", policies.dump(2)));
  if (summary) *summary += md;
  std::ofstream(o.out_dir + "/evaluation.md", std::ios::app) << md;
  return absl::OkStatus();
}

}  // namespace

absl::Status Evaluate(const EvaluateOptions& o, std::string* summary,
                      const std::function<void(int64_t, int64_t)>& live_progress) {
  KVG_ASSIGN_OR_RETURN(std::unique_ptr<Inputs> in, LoadInputs(o));
  KVG_ASSIGN_OR_RETURN(Controllers controllers, TuneControllers(o, *in));
  const Offline off = Simulate(in->test, in->hazards, controllers.tuned);
  std::set<Key> configs;
  std::set<std::string> test_prompts;
  for (const Trace* t : in->test) {
    if (t->compressor != "none") configs.insert({t->compressor, t->ratio});
    test_prompts.insert(t->prompt_id);
  }
  LiveResult live;
  if (o.live)
    KVG_RETURN_IF_ERROR(RunLiveOnTestPrompts(o, in->manifest, test_prompts, configs, controllers,
                                             live, live_progress));
  KVG_RETURN_IF_ERROR(
      WriteReport(o, configs, test_prompts.size(), controllers, off, live, summary));
  return WriteAdmissionPolicies(o, *in, controllers.admission, summary);
}

}  // namespace kvguard::research
