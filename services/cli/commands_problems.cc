// `kvguard problems`: print generated arithmetic word problems (one JSON per line).
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "research/problems.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"

namespace kvguard::cli {

// "key=value" overrides of ProblemOptions, through its JSON form.
absl::StatusOr<research::ProblemOptions> ProblemOptionsFrom(const std::vector<std::string>& overrides) {
  nlohmann::json j = research::ToJson(research::ProblemOptions{});
  for (const std::string& kv : overrides) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("--problem-opt '", kv, "' must look like key=value"));
    }
    const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
    if (!j.contains(key)) return absl::InvalidArgumentError(absl::StrCat("unknown problem option '", key, "'"));
    nlohmann::json v = nlohmann::json::parse(value, nullptr, false);
    j[key] = v.is_discarded() ? nlohmann::json(value) : v;
  }
  return research::OptionsFromJson(j);
}

absl::Status RunProblems(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv, {"split", "count", "start", "problem-opt"}, {"json"}));
  KVG_ASSIGN_OR_RETURN(research::Split split, research::ParseSplit(args.Get("split", "test")));
  KVG_ASSIGN_OR_RETURN(int64_t count, args.GetInt("count", 5));
  KVG_ASSIGN_OR_RETURN(int64_t start, args.GetInt("start", 0));
  KVG_ASSIGN_OR_RETURN(research::ProblemOptions options, ProblemOptionsFrom(args.GetAll("problem-opt")));
  KVG_ASSIGN_OR_RETURN(auto problems, research::GenerateProblems(options, split, start, count));
  for (const auto& p : problems) {
    if (args.Has("json")) {
      std::cout << research::ToJson(p).dump() << "\n";
    } else {
      std::cout << "# " << p.id << " (answer " << p.answer << ")\n" << p.prompt << p.solution << "\n\n";
    }
  }
  return absl::OkStatus();
}

}  // namespace kvguard::cli
