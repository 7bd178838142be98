#include "research/pipeline/traces.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace kvguard::research {

std::vector<std::string> CompressorOptionsFor(const std::string& compressor,
                                              const std::vector<std::string>& entries) {
  std::vector<std::string> out;
  for (const std::string& e : entries) {
    if (e.size() > compressor.size() && e.compare(0, compressor.size(), compressor) == 0 &&
        e[compressor.size()] == ':') {
      out.push_back(e.substr(compressor.size() + 1));
    }
  }
  return out;
}

std::string ConfigName(const std::string& compressor, double ratio) {
  if (compressor.empty() || compressor == "none") return "none";
  return absl::StrFormat("%s@%.3g", compressor, ratio);
}

nlohmann::json TraceToJson(const Trace& t) {
  return {{"prompt_id", t.prompt_id},
          {"compressor", t.compressor},
          {"ratio", t.ratio},
          {"outcome", t.outcome},
          {"catastrophic", t.catastrophic},
          {"looped", t.looped},
          {"non_terminated", t.non_terminated},
          {"correct", t.correct},
          {"onset", t.onset},
          {"tokens", t.tokens},
          {"kv_bytes", t.kv_bytes},
          {"kv_bytes_uncompressed", t.kv_bytes_uncompressed},
          {"prefill_evicted_attention", t.prefill_evicted_attention},
          {"row_offset", t.row_offset}};
}

absl::StatusOr<Trace> TraceFromJson(const nlohmann::json& j) {
  try {
    Trace t;
    t.prompt_id = j.at("prompt_id");
    t.compressor = j.at("compressor");
    t.ratio = j.at("ratio");
    t.outcome = j.at("outcome");
    t.catastrophic = j.at("catastrophic");
    t.looped = j.at("looped");
    t.non_terminated = j.at("non_terminated");
    t.correct = j.at("correct");
    t.onset = j.at("onset");
    t.tokens = j.at("tokens");
    t.kv_bytes = j.at("kv_bytes");
    t.kv_bytes_uncompressed = j.at("kv_bytes_uncompressed");
    t.prefill_evicted_attention = j.value("prefill_evicted_attention", 0.0);  // absent before 12-02
    t.row_offset = j.at("row_offset");
    return t;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("trace record: ", e.what()));
  }
}

absl::StatusOr<nlohmann::json> ReadManifest(const std::string& dir) {
  std::ifstream manifest_in(dir + "/manifest.json");
  if (!manifest_in)
    return absl::NotFoundError(absl::StrCat(dir, ": no manifest.json (not a trace directory)"));
  nlohmann::json manifest = nlohmann::json::parse(manifest_in, nullptr, false);
  if (manifest.is_discarded())
    return absl::InvalidArgumentError(absl::StrCat(dir, "/manifest.json: bad JSON"));
  return manifest;
}

absl::StatusOr<std::vector<Trace>> LoadTraces(const std::string& dir, int64_t* num_features) {
  KVG_ASSIGN_OR_RETURN(const nlohmann::json manifest, ReadManifest(dir));
  const int64_t nf = manifest.value("num_features", 0);
  if (nf <= 0)
    return absl::InvalidArgumentError(absl::StrCat(dir, "/manifest.json: no num_features"));
  if (num_features) *num_features = nf;
  std::vector<Trace> out;
  for (const auto& config : manifest.value("configs", std::vector<std::string>{})) {
    const std::string base = dir + "/" + config;
    if (!std::filesystem::exists(base + ".done")) continue;
    std::ifstream meta(base + ".jsonl");
    std::ifstream rows(base + ".f32", std::ios::binary);
    std::string line;
    while (std::getline(meta, line)) {
      auto t = TraceFromJson(nlohmann::json::parse(line));
      if (!t.ok()) return t.status();
      t->features.resize(static_cast<size_t>(t->tokens * nf));
      rows.seekg(static_cast<std::streamoff>(t->row_offset * nf * sizeof(float)));
      rows.read(reinterpret_cast<char*>(t->features.data()),
                static_cast<std::streamsize>(t->features.size() * sizeof(float)));
      if (!rows) return absl::DataLossError(absl::StrCat(base, ".f32: truncated"));
      out.push_back(std::move(*t));
    }
  }
  return out;
}

}  // namespace kvguard::research
