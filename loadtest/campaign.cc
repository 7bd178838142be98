#include "loadtest/campaign.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "research/problems.h"

namespace kvguard::loadtest {
namespace {

using json = nlohmann::json;

absl::Status ApplyField(LoadSpec& s, const std::string& key, const json& v) {
  try {
    if (key == "mode")
      s.mode = v.get<std::string>();
    else if (key == "concurrency")
      s.concurrency = v.get<int>();
    else if (key == "rate")
      s.rate = v.get<double>();
    else if (key == "requests")
      s.requests = v.get<int>();
    else if (key == "max_seconds")
      s.max_seconds = v.get<double>();
    else if (key == "drain_seconds")
      s.drain_seconds = v.get<double>();
    else if (key == "max_new_tokens")
      s.max_new_tokens = v.get<int>();
    else if (key == "temperature")
      s.temperature = v.get<double>();
    else if (key == "compressor")
      s.compressor = v.get<std::string>();
    else if (key == "ratio")
      s.ratio = v.get<double>();
    else if (key == "guard")
      s.guard = v.is_boolean() ? (v.get<bool>() ? "true" : "false") : v.get<std::string>();
    else if (key == "seed")
      s.seed = v.get<uint64_t>();
    else
      return absl::InvalidArgumentError(absl::StrCat("campaign: unknown run field '", key, "'"));
  } catch (const json::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat("campaign: field '", key, "' has the wrong type"));
  }
  return absl::OkStatus();
}

std::string ValueName(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

absl::StatusOr<std::vector<PromptItem>> Prompts(const json& p) {
  std::vector<PromptItem> out;
  const std::string source = p.value("source", "problems");
  if (source == "file") {
    std::ifstream in(p.value("path", ""));
    if (!in)
      return absl::NotFoundError(
          absl::StrCat("campaign: cannot read prompts file '", p.value("path", ""), "'"));
    std::string line;
    for (int i = 0; std::getline(in, line); ++i) {
      if (line.empty()) continue;
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("prompt")) {
        return absl::InvalidArgumentError(
            absl::StrCat("campaign: prompts line ", i + 1, " needs a \"prompt\""));
      }
      PromptItem item{.id = j.value("id", absl::StrCat("line-", i + 1)),
                      .text = j["prompt"].get<std::string>()};
      if (j.contains("answer") && j["answer"].is_number_integer())
        item.gold = j["answer"].get<int64_t>();
      out.push_back(std::move(item));
    }
    return out;
  }
  if (source != "problems")
    return absl::InvalidArgumentError("campaign: prompts.source must be problems or file");
  research::ProblemOptions options;
  if (p.contains("options")) {
    KVG_ASSIGN_OR_RETURN(options, research::OptionsFromJson(p["options"]));
  }
  KVG_ASSIGN_OR_RETURN(research::Split split, research::ParseSplit(p.value("split", "test")));
  KVG_ASSIGN_OR_RETURN(auto problems,
                       research::GenerateProblems(options, split, 0, p.value("count", 32)));
  for (auto& pr : problems) out.push_back({.id = pr.id, .text = pr.prompt, .gold = pr.answer});
  return out;
}

}  // namespace

absl::StatusOr<Campaign> ParseCampaign(const std::string& text,
                                       const std::string& target_override) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError("campaign: not a JSON object");
  Campaign c;
  c.name = j.value("name", "campaign");
  LoadSpec base;
  base.target = target_override.empty() ? j.value("target", "127.0.0.1:50051") : target_override;
  if (j.contains("base")) {
    for (const auto& [k, v] : j["base"].items()) KVG_RETURN_IF_ERROR(ApplyField(base, k, v));
  }
  std::vector<LoadSpec> runs = {base};
  if (j.contains("sweep")) {
    for (const auto& [key, values] : j["sweep"].items()) {
      if (!values.is_array() || values.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("campaign: sweep '", key, "' must be a non-empty list"));
      }
      std::vector<LoadSpec> next;
      for (const LoadSpec& r : runs) {
        for (const json& v : values) {
          LoadSpec s = r;
          KVG_RETURN_IF_ERROR(ApplyField(s, key, v));
          s.name = r.name.empty() ? absl::StrCat(key, "=", ValueName(v))
                                  : absl::StrCat(r.name, ",", key, "=", ValueName(v));
          next.push_back(std::move(s));
        }
      }
      runs = std::move(next);
    }
  }
  for (LoadSpec& r : runs) {
    if (r.name.empty()) r.name = c.name;
    KVG_RETURN_IF_ERROR(ValidateSpec(r));
  }
  c.runs = std::move(runs);
  if (j.contains("slo")) {
    c.slo.ttft_ms = j["slo"].value("ttft_ms", c.slo.ttft_ms);
    c.slo.tpot_ms = j["slo"].value("tpot_ms", c.slo.tpot_ms);
    c.slo.e2e_ms = j["slo"].value("e2e_ms", c.slo.e2e_ms);
  }
  KVG_ASSIGN_OR_RETURN(c.prompts, Prompts(j.value("prompts", json::object())));
  if (c.prompts.empty()) return absl::InvalidArgumentError("campaign: no prompts");
  return c;
}

absl::StatusOr<Campaign> LoadCampaign(const std::string& path, const std::string& target_override) {
  KVG_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseCampaign(text, target_override);
}

}  // namespace kvguard::loadtest
