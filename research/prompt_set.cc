#include "research/prompt_set.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"

namespace kvguard::research {
namespace {

struct Gsm8kItem {
  std::string question, solution;  // solution: the worked answer up to "####"
  int64_t answer = 0;
};

absl::StatusOr<std::vector<Gsm8kItem>> ReadJsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<Gsm8kItem> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("question") || !j.contains("answer") || !j["question"].is_string() ||
        !j["answer"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": expected {\"question\", \"answer\"} strings"));
    }
    const std::string answer = j["answer"].get<std::string>();
    const size_t mark = answer.rfind("####");
    if (mark == std::string::npos) return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": answer has no ####"));
    std::string gold = absl::StrReplaceAll(absl::StripAsciiWhitespace(answer.substr(mark + 4)), {{",", ""}});
    Gsm8kItem item{.question = j["question"].get<std::string>(),
                   .solution = std::string(absl::StripAsciiWhitespace(answer.substr(0, mark)))};
    if (!absl::SimpleAtoi(gold, &item.answer)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": gold answer '", gold, "' is not an integer"));
    }
    out.push_back(std::move(item));
  }
  return out;
}

absl::StatusOr<std::vector<Problem>> LoadGsm8k(const PromptSetSpec& s) {
  if (s.shots < 0) return absl::InvalidArgumentError("shots must be >= 0");
  auto train = ReadJsonl(s.data_dir + "/train.jsonl");
  if (!train.ok()) return train.status();
  if (static_cast<int64_t>(train->size()) <= s.shots) {
    return absl::InvalidArgumentError(absl::StrCat("train.jsonl has ", train->size(), " items; need more than ", s.shots, " shots"));
  }
  std::string examples;
  for (int i = 0; i < s.shots; ++i) {
    const Gsm8kItem& e = (*train)[i];
    absl::StrAppend(&examples, "Question: ", e.question, "\nAnswer: ", StripCalculatorAnnotations(e.solution),
                    "\n#### ", e.answer, "\n\n");
  }
  std::vector<Gsm8kItem> pool;
  int64_t begin = 0;  // line index of pool[0] in its file
  if (s.split == Split::kTest) {
    auto test = ReadJsonl(s.data_dir + "/test.jsonl");
    if (!test.ok()) return test.status();
    pool = std::move(*test);
  } else {
    const int64_t rest = static_cast<int64_t>(train->size()) - s.shots;
    const int64_t val_begin = s.shots + rest * 9 / 10;
    begin = s.split == Split::kVal ? val_begin : s.shots;
    const int64_t end = s.split == Split::kVal ? static_cast<int64_t>(train->size()) : val_begin;
    pool.assign(train->begin() + begin, train->begin() + end);
  }
  if (s.first < 0 || s.count < 0 || s.first + s.count > static_cast<int64_t>(pool.size())) {
    return absl::OutOfRangeError(absl::StrCat("gsm8k ", std::string(SplitName(s.split)), " has ", pool.size(), " items; asked for [",
                                              s.first, ", ", s.first + s.count, ")"));
  }
  std::vector<Problem> out;
  for (int64_t i = s.first; i < s.first + s.count; ++i) {
    const Gsm8kItem& item = pool[i];
    Problem p{.id = absl::StrFormat("gsm8k-%s-%06d", std::string(SplitName(s.split)), begin + i), .split = s.split, .index = begin + i};
    p.prompt = examples;
    p.question_begin_char = static_cast<int64_t>(p.prompt.size());
    absl::StrAppend(&p.prompt, "Question: ", item.question, "\nAnswer:");
    p.solution = absl::StrCat(StripCalculatorAnnotations(item.solution), "\n#### ", item.answer);
    p.answer = item.answer;
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace

std::vector<std::string> PromptSetSpec::StopStrings() const {
  if (dataset == "gsm8k") return {"\n\nQuestion:"};
  return {};
}

std::string StripCalculatorAnnotations(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 2, "<<") == 0) {
      const size_t close = s.find(">>", i + 2);
      if (close != std::string_view::npos) {
        i = close + 2;
        continue;
      }
    }
    out.push_back(s[i++]);
  }
  return out;
}

absl::StatusOr<std::vector<Problem>> LoadPrompts(const PromptSetSpec& spec) {
  if (spec.dataset == "arith") return GenerateProblems(spec.problem_options, spec.split, spec.first, spec.count);
  if (spec.dataset == "gsm8k") return LoadGsm8k(spec);
  return absl::InvalidArgumentError(absl::StrCat("unknown dataset '", spec.dataset, "' (arith | gsm8k)"));
}

nlohmann::json ToJson(const PromptSetSpec& s) {
  nlohmann::json j = {{"dataset", s.dataset}, {"split", std::string(SplitName(s.split))},
                      {"first", s.first},     {"count", s.count}};
  if (s.dataset == "arith") j["problem_options"] = ToJson(s.problem_options);
  if (s.dataset == "gsm8k") {
    j["data_dir"] = s.data_dir;
    j["shots"] = s.shots;
  }
  return j;
}

absl::StatusOr<PromptSetSpec> PromptSetFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("prompt set: expected an object");
  PromptSetSpec s;
  s.dataset = j.value("dataset", std::string("arith"));
  auto split = ParseSplit(j.value("split", std::string("test")));
  if (!split.ok()) return split.status();
  s.split = *split;
  s.first = j.value("first", int64_t{0});
  s.count = j.value("count", int64_t{0});
  if (j.contains("problem_options")) {
    auto o = OptionsFromJson(j["problem_options"]);
    if (!o.ok()) return o.status();
    s.problem_options = *o;
  }
  s.data_dir = j.value("data_dir", std::string());
  s.shots = j.value("shots", 8);
  return s;
}

}  // namespace kvguard::research
