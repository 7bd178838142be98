#include "research/pipeline/prefill_risk.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "research/pipeline/question_attention.h"
#include "research/pipeline/sweep.h"
#include "research/pipeline/traces.h"
#include "services/engine/sequence.h"

namespace kvguard::research {

absl::Status RunPrefillRisk(const PrefillRiskOptions& o,
                            const std::function<void(int64_t, int64_t)>& progress) {
  KVG_ASSIGN_OR_RETURN(TextModel loaded, LoadTextModel(o.model_path, o.threads, "prefill-risk"));
  auto& [tok, model] = loaded;
  KVG_ASSIGN_OR_RETURN(auto problems, LoadPrompts(o.prompt_set));
  std::ofstream out(o.out_path, std::ios::trunc);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write ", o.out_path));
  const int64_t total =
      static_cast<int64_t>(problems.size() * o.compressors.size() * o.ratios.size());
  int64_t done = 0;
  c10::InferenceMode inference;
  for (const Problem& problem : problems) {
    engine::GenerateRequest req;
    KVG_ASSIGN_OR_RETURN(req.prompt_ids, tok->Encode(problem.prompt));
    const auto n = static_cast<int64_t>(req.prompt_ids.size());
    req.max_new_tokens = 1;
    KVG_ASSIGN_OR_RETURN(auto span, QuestionSpan(*tok, problem, n));
    KVG_ASSIGN_OR_RETURN(QuestionAttention qa,
                         QuestionAttentionOf(*model, req.prompt_ids, span.first));
    for (const std::string& compressor : o.compressors) {
      for (double ratio : o.ratios) {
        req.compression = {.compressor = compressor,
                           .options = CompressorOptionsFor(compressor, o.compressor_options),
                           .ratio = ratio};
        // The sweep's Sequence options, so the prefill evicts exactly what its traces' did.
        KVG_ASSIGN_OR_RETURN(auto seq, engine::Sequence::Create(
                                           *model, tok.get(), req,
                                           {.report_top_logprobs = 20, .gather_attention = true}));
        engine::ForwardItem item = *seq->NextForward();
        KVG_ASSIGN_OR_RETURN(at::Tensor logits, model->Forward({&item, 1}));
        const at::Tensor host = logits.to(at::kCPU).contiguous();
        KVG_RETURN_IF_ERROR(seq->AfterForward(host.data_ptr<float>()).status());
        const std::vector<double> per_layer = EvictedQuestionMass(qa, seq->cache());
        double mean = 0;
        for (double m : per_layer) mean += m / static_cast<double>(per_layer.size());
        nlohmann::json line;
        line["prompt_id"] = problem.id;
        line["compressor"] = compressor;
        line["ratio"] = ratio;
        line["prompt_tokens"] = n;
        line["question_tokens"] = n - span.first;
        line["evicted_question_attention"] = mean;
        line["per_layer"] = per_layer;
        out << line.dump() << "\n";
        progress(++done, total);
      }
    }
  }
  if (!out.good()) return absl::InternalError(absl::StrCat("cannot write ", o.out_path));
  return absl::OkStatus();
}

}  // namespace kvguard::research
