#include "research/pipeline/sweep.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <deque>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/status_macros.h"
#include "guard_sidecar/catastrophe.h"
#include "guard_sidecar/features.h"
#include "research/pipeline/traces.h"
#include "services/engine/checkpoint.h"
#include "services/engine/llama_model.h"
#include "services/engine/sequence.h"
#include "services/server/step_report.h"

namespace kvguard::research {
namespace {

struct Config {
  std::string compressor;  // "none" or a registry name
  double ratio = 0;
  std::vector<std::string> options;
};

struct Running {
  const Problem* problem = nullptr;
  std::unique_ptr<engine::Sequence> seq;
  guard::SessionFeatures features;
  std::vector<float> rows;
  double prefill_evicted_attention = 0;
};

class ShardWriter {
 public:
  explicit ShardWriter(const std::string& base)
      : meta_(base + ".jsonl", std::ios::trunc),
        rows_(base + ".f32", std::ios::binary | std::ios::trunc) {}
  void Write(Trace t, const std::vector<float>& rows) {
    t.row_offset = next_row_;
    next_row_ += t.tokens;
    meta_ << TraceToJson(t).dump() << "\n";
    rows_.write(reinterpret_cast<const char*>(rows.data()),
                static_cast<std::streamsize>(rows.size() * sizeof(float)));
  }
  bool ok() const { return meta_.good() && rows_.good(); }

 private:
  std::ofstream meta_, rows_;
  int64_t next_row_ = 0;
};

Trace Finish(const Running& r, const Config& c) {
  engine::GenerateResult result = r.seq->Result();
  const guard::Outcome o = guard::Classify(result.output_ids, result.text,
                                           result.finish_reason == engine::FinishReason::kLength,
                                           result.finish_reason == engine::FinishReason::kEos ||
                                               result.finish_reason == engine::FinishReason::kStop,
                                           r.problem->answer);
  Trace t;
  t.prompt_id = r.problem->id;
  t.compressor = c.compressor;
  t.ratio = c.ratio;
  t.outcome = std::string(guard::OutcomeKindName(o.kind));
  t.catastrophic = o.catastrophic;
  t.looped = o.looped;
  t.non_terminated = o.non_terminated;
  t.correct = o.correct;
  t.onset = o.onset;
  t.tokens = static_cast<int64_t>(result.output_ids.size());
  t.kv_bytes = result.kv_bytes;
  t.kv_bytes_uncompressed = r.seq->cache().UncompressedBytes();
  t.prefill_evicted_attention = r.prefill_evicted_attention;
  return t;
}

absl::Status RunConfig(engine::LlamaModel& model, const engine::Tokenizer& tok,
                       const std::vector<Problem>& problems, const Config& c, const SweepOptions& o,
                       const std::string& base, const std::function<void()>& on_trace) {
  ShardWriter writer(base);
  std::deque<const Problem*> queue;
  for (const Problem& p : problems) queue.push_back(&p);
  std::vector<std::unique_ptr<Running>> active;
  c10::InferenceMode inference;
  while (!queue.empty() || !active.empty()) {
    while (!queue.empty() && static_cast<int>(active.size()) < o.batch) {
      auto r = std::make_unique<Running>();
      r->problem = queue.front();
      queue.pop_front();
      engine::GenerateRequest req;
      KVG_ASSIGN_OR_RETURN(req.prompt_ids, tok.Encode(r->problem->prompt));
      req.max_new_tokens = o.max_new_tokens;
      req.sampling.repetition_penalty = o.repetition_penalty;
      req.sampling.no_repeat_ngram = o.no_repeat_ngram;
      req.stop_strings = o.prompt_set.StopStrings();
      if (c.compressor != "none") {
        req.compression = {.compressor = c.compressor, .options = c.options, .ratio = c.ratio};
        if (c.compressor == "q2c") {
          KVG_ASSIGN_OR_RETURN(
              auto span,
              QuestionSpan(tok, *r->problem, static_cast<int64_t>(req.prompt_ids.size())));
          req.compression.options.push_back(absl::StrCat("question_begin=", span.first));
          req.compression.options.push_back(absl::StrCat("question_end=", span.second));
        }
      }
      r->features =
          guard::SessionFeatures({.requested_ratio = c.ratio,
                                  .prompt_tokens = static_cast<uint32_t>(req.prompt_ids.size()),
                                  .max_new_tokens = static_cast<uint32_t>(o.max_new_tokens)});
      // Same per-token inputs as a guarded request in the server.
      KVG_ASSIGN_OR_RETURN(
          r->seq, engine::Sequence::Create(model, &tok, req,
                                           {.report_top_logprobs = 20, .gather_attention = true}));
      active.push_back(std::move(r));
    }
    std::vector<engine::ForwardItem> items;
    for (auto& r : active) items.push_back(*r->seq->NextForward());
    KVG_ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(items));
    at::Tensor host = logits.to(at::kCPU).contiguous();
    std::vector<engine::Sequence*> sequences;
    for (auto& r : active) sequences.push_back(r->seq.get());
    auto steps = engine::AfterForwardAll(sequences, host.data_ptr<float>(), host.size(1));
    for (size_t i = 0; i < active.size(); ++i) {
      Running& r = *active[i];
      if (!steps[i].ok()) return steps[i].status();
      const engine::StepResult& step = *steps[i];
      if (step.step == 0) {
        for (float a : step.evicted_attention) r.prefill_evicted_attention += a;
      }
      v1::StepReport report =
          server::MakeStepReport(step, model.config(), &tok, {.session_id = r.problem->id});
      guard::FeatureRow row;
      r.features.Update(report, row);
      r.rows.insert(r.rows.end(), row.begin(), row.end());
    }
    for (auto& r : active) {
      if (!r->seq->finished()) continue;
      writer.Write(Finish(*r, c), r->rows);
      on_trace();
      r.reset();
    }
    std::erase_if(active, [](const auto& r) { return r == nullptr; });
  }
  if (!writer.ok()) return absl::InternalError(absl::StrCat("cannot write ", base, ".{jsonl,f32}"));
  std::ofstream(base + ".done") << "ok\n";
  return absl::OkStatus();
}

std::vector<Config> Configs(const SweepOptions& o) {
  std::vector<Config> out = {{.compressor = "none"}};
  for (const std::string& c : o.compressors) {
    const std::vector<std::string> options = CompressorOptionsFor(c, o.compressor_options);
    for (double r : o.ratios) out.push_back({.compressor = c, .ratio = r, .options = options});
  }
  return out;
}

}  // namespace

absl::StatusOr<std::pair<int64_t, int64_t>> QuestionSpan(const engine::Tokenizer& tok,
                                                         const Problem& p, int64_t prompt_tokens) {
  KVG_ASSIGN_OR_RETURN(auto prefix,
                       tok.Encode(std::string_view(p.prompt).substr(0, p.question_begin_char)));
  return std::make_pair(static_cast<int64_t>(prefix.size()), prompt_tokens);
}

absl::StatusOr<TextModel> LoadTextModel(const std::string& path, int threads,
                                        const std::string& command) {
  if (threads > 0) {
    at::set_num_threads(threads);
    SetBlasThreads(threads);
  }
  KVG_ASSIGN_OR_RETURN(engine::Checkpoint ckpt, engine::OpenCheckpoint(path));
  if (ckpt.tokenizer_path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        command, " needs a model with a tokenizer.json (it prompts with text problems)"));
  }
  KVG_ASSIGN_OR_RETURN(auto tok, engine::Tokenizer::Load(ckpt.tokenizer_path));
  KVG_ASSIGN_OR_RETURN(auto model, engine::LlamaModel::Load(std::move(ckpt), {}));
  return TextModel{std::move(tok), std::move(model)};
}

absl::Status RunSweep(const SweepOptions& o,
                      const std::function<void(int64_t, int64_t)>& progress) {
  KVG_ASSIGN_OR_RETURN(TextModel loaded, LoadTextModel(o.model_path, o.threads, "sweep"));
  auto& [tok, model] = loaded;
  KVG_ASSIGN_OR_RETURN(auto problems, LoadPrompts(o.prompt_set));
  std::filesystem::create_directories(o.out_dir);
  const std::vector<Config> configs = Configs(o);
  nlohmann::json manifest = {
      {"model", o.model_path},
      {"prompt_set", ToJson(o.prompt_set)},
      {"compressor_options", o.compressor_options},
      {"max_new_tokens", o.max_new_tokens},
      {"repetition_penalty", o.repetition_penalty},
      {"no_repeat_ngram", o.no_repeat_ngram},
      {"num_features", guard::kNumFeatures},
      {"feature_names",
       std::vector<std::string>(guard::kFeatureNames.begin(), guard::kFeatureNames.end())}};
  for (const Config& c : configs) manifest["configs"].push_back(ConfigName(c.compressor, c.ratio));
  std::ofstream(o.out_dir + "/manifest.json") << manifest.dump(2);
  const int64_t total = static_cast<int64_t>(configs.size() * problems.size());
  int64_t done = 0;
  for (const Config& c : configs) {
    const std::string base = o.out_dir + "/" + ConfigName(c.compressor, c.ratio);
    if (std::filesystem::exists(base + ".done")) {  // resume
      done += static_cast<int64_t>(problems.size());
      if (progress) progress(done, total);
      continue;
    }
    KVG_RETURN_IF_ERROR(RunConfig(*model, *tok, problems, c, o, base, [&] {
      if (progress) progress(++done, total);
    }));
  }
  return absl::OkStatus();
}

}  // namespace kvguard::research
