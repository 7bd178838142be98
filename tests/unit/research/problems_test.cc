// File: tests/unit/research/problems_test.cc
#include "research/problems.h"

#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvguard::research {
namespace {

std::vector<Problem> Gen(const ProblemOptions& options, Split split, int64_t count,
                         int64_t begin = 0) {
  absl::StatusOr<std::vector<Problem>> problems =
      GenerateProblems(options, split, begin, count);
  EXPECT_TRUE(problems.ok()) << problems.status();
  return problems.ok() ? *problems : std::vector<Problem>{};
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n');
}

// Re-derives the solution's arithmetic: line 0 states the initial amount, each
// step line ends in "a op b = c." with a = previous c, and the last line is
// "Answer: c_last". Returns a failure description, or "" when it all checks.
std::string CheckSolution(const Problem& p) {
  static const std::regex kOpening(R"(^[A-Z][a-z]+ has (\d+) [a-z]+\.$)");
  static const std::regex kStep(R"( (\d+) ([-+*]) (\d+) = (\d+)\.$)");
  static const std::regex kAnswer(R"(^Answer: (\d+)$)");
  const std::vector<std::string> lines = Lines(p.solution);
  if (lines.size() != static_cast<size_t>(p.num_steps) + 2) return "wrong line count";
  std::smatch m;
  if (!std::regex_match(lines.front(), m, kOpening)) return "bad opening: " + lines.front();
  int64_t amount = std::stoll(m[1]);
  for (size_t i = 1; i + 1 < lines.size(); ++i) {
    if (!std::regex_search(lines[i], m, kStep)) return "no arithmetic in: " + lines[i];
    const int64_t a = std::stoll(m[1]), b = std::stoll(m[3]), c = std::stoll(m[4]);
    const char op = m.str(2)[0];
    const int64_t expected = op == '+' ? a + b : op == '-' ? a - b : a * b;
    if (a != amount) return "step does not continue the chain: " + lines[i];
    if (c != expected) return "wrong arithmetic: " + lines[i];
    if (c < 0) return "negative amount: " + lines[i];
    amount = c;
  }
  if (!std::regex_match(lines.back(), m, kAnswer)) return "bad last line: " + lines.back();
  if (std::stoll(m[1]) != amount || p.answer != amount) return "answer mismatch";
  return "";
}

TEST(ProblemsTest, IdsDependOnlyOnSplitAndIndex) {
  EXPECT_EQ(ProblemId(Split::kTrain, 123), "arith-train-000123");
  EXPECT_EQ(ProblemId(Split::kTest, 0), "arith-test-000000");
  EXPECT_EQ(ProblemId(Split::kVal, 1234567), "arith-val-1234567");
  ProblemOptions other{.max_steps = 3, .num_padding = 5, .seed = 99};
  for (int64_t i : {0, 7, 1999}) {
    EXPECT_EQ(GenerateProblem({}, Split::kVal, i)->id,
              GenerateProblem(other, Split::kVal, i)->id);
  }
}

TEST(ProblemsTest, DeterministicAcrossGenerations) {
  const ProblemOptions options{.num_distractors = 2, .num_padding = 3};
  const std::vector<Problem> a = Gen(options, Split::kTrain, 200);
  const std::vector<Problem> b = Gen(options, Split::kTrain, 200);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].id, b[i].id);
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].solution, b[i].solution);
  }
  // Random access: problem 150 alone equals problem 150 of the batch.
  EXPECT_EQ(GenerateProblem(options, Split::kTrain, 150)->prompt, a[150].prompt);
}

// Golden text: catches any change of PRNG, word lists, templates or draw order
// (and any platform dependence). Update deliberately, with the dataset version.
TEST(ProblemsTest, GoldenFirstTrainProblem) {
  absl::StatusOr<Problem> p = GenerateProblem({}, Split::kTrain, 0);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->id, "arith-train-000000");
  EXPECT_EQ(p->prompt,
            "Lily has 18 eggs. Eva gives Lily 4 eggs. Then Lily has 2 times as many eggs. "
            "Then Lily has 2 times as many eggs. Lily has 19 cards. Lily gives 11 eggs to Jack."
            "\nQuestion: How many eggs does Lily have now?\nSolution:\n");
  EXPECT_EQ(p->solution,
            "Lily has 18 eggs.\n"
            "Eva gives Lily 4 eggs. 18 + 4 = 22.\n"
            "Then Lily has 2 times as many eggs. 22 * 2 = 44.\n"
            "Then Lily has 2 times as many eggs. 44 * 2 = 88.\n"
            "Lily gives 11 eggs to Jack. 88 - 11 = 77.\n"
            "Answer: 77");
  EXPECT_EQ(p->answer, 77);
  EXPECT_EQ(p->num_steps, 4);
  EXPECT_EQ(p->question_begin_char, 160);
}

TEST(ProblemsTest, SplitsAreDisjoint) {
  const ProblemOptions options;
  std::set<std::string> seen;
  std::set<std::string> ids;
  for (Split split : {Split::kTrain, Split::kVal, Split::kTest}) {
    std::set<std::string> here;
    for (const Problem& p : Gen(options, split, 2000)) {
      here.insert(p.prompt);
      ids.insert(p.id);
    }
    for (const std::string& prompt : here) {
      EXPECT_EQ(seen.count(prompt), 0u) << "prompt in two splits:\n" << prompt;
    }
    seen.insert(here.begin(), here.end());
  }
  EXPECT_EQ(ids.size(), 6000u);
}

// Stronger than distinct prompts: no test problem shares its arithmetic chain
// (the solution's numbers and operators) with a train problem.
TEST(ProblemsTest, SplitsShareNoArithmetic) {
  auto chain = [](const Problem& p) {
    static const std::regex kOpening(R"( has (\d+) )");
    static const std::regex kStep(R"(\d+ [-+*] \d+ = \d+)");
    const std::string& s = p.solution;
    std::smatch m;
    std::string out = std::regex_search(s, m, kOpening) ? m.str(1) + ";" : "";
    for (std::sregex_iterator it(s.begin(), s.end(), kStep), end; it != end; ++it) {
      out += it->str() + ";";
    }
    return out;
  };
  std::set<std::string> train;
  for (const Problem& p : Gen({}, Split::kTrain, 2000)) train.insert(chain(p));
  for (Split split : {Split::kVal, Split::kTest}) {
    for (const Problem& p : Gen({}, split, 1000)) EXPECT_EQ(train.count(chain(p)), 0u) << p.id;
  }
}

TEST(ProblemsTest, SolutionArithmeticIsCorrect) {
  const std::vector<ProblemOptions> variants = {
      {},
      {.min_steps = 4, .max_steps = 4, .max_operand = 50, .max_multiplier = 5},
      {.ops = kOpSub, .seed = 3},
      {.ops = kOpMul, .seed = 4},
      {.max_operand = 9, .max_value = 30, .num_distractors = 4},
  };
  for (const ProblemOptions& options : variants) {
    for (Split split : {Split::kTrain, Split::kVal, Split::kTest}) {
      for (const Problem& p : Gen(options, split, 300)) {
        EXPECT_EQ(CheckSolution(p), "") << p.id << "\n" << p.prompt << p.solution;
        EXPECT_GE(p.answer, 0);
        EXPECT_LE(p.answer, options.max_value);
        EXPECT_TRUE(p.solution.ends_with("Answer: " + std::to_string(p.answer)));
      }
    }
  }
}

TEST(ProblemsTest, PromptShapeAndQuestionOffset) {
  for (const Problem& p : Gen({.num_padding = 4}, Split::kTest, 100)) {
    ASSERT_GT(p.question_begin_char, 0);
    EXPECT_EQ(p.prompt.substr(p.question_begin_char, 19), "Question: How many ");
    EXPECT_EQ(p.prompt[p.question_begin_char - 1], '\n');
    EXPECT_TRUE(p.prompt.ends_with(" have now?\nSolution:\n"));
    // Every story sentence the solution restates is in the context.
    const std::vector<std::string> lines = Lines(p.solution);
    const std::string context = p.prompt.substr(0, p.question_begin_char);
    EXPECT_NE(context.find(lines.front()), std::string::npos) << p.prompt;
  }
}

TEST(ProblemsTest, MoreStepsMeanMoreLines) {
  const std::vector<Problem> two = Gen({.min_steps = 2, .max_steps = 2}, Split::kTrain, 50);
  const std::vector<Problem> four = Gen({.min_steps = 4, .max_steps = 4}, Split::kTrain, 50);
  for (const Problem& p : two) EXPECT_EQ(Lines(p.solution).size(), 4u);
  for (const Problem& p : four) EXPECT_EQ(Lines(p.solution).size(), 6u);
}

TEST(ProblemsTest, PaddingLengthensPromptAndKeepsTheProblem) {
  const ProblemOptions plain;
  for (PaddingPlacement placement : {PaddingPlacement::kInterleaved,
                                     PaddingPlacement::kBeforeStory,
                                     PaddingPlacement::kAfterStory}) {
    const ProblemOptions padded{.num_padding = 40, .padding_placement = placement};
    for (int64_t i = 0; i < 30; ++i) {
      const Problem a = *GenerateProblem(plain, Split::kTrain, i);
      const Problem b = *GenerateProblem(padded, Split::kTrain, i);
      EXPECT_GT(b.prompt.size(), a.prompt.size() + 40 * 10);
      EXPECT_EQ(a.solution, b.solution);  // padding is drawn last
      EXPECT_EQ(a.prompt.substr(a.question_begin_char), b.prompt.substr(b.question_begin_char));
    }
  }
  // After-story padding puts the filler right before the question.
  const Problem p = *GenerateProblem(
      {.num_padding = 3, .padding_placement = PaddingPlacement::kAfterStory}, Split::kTrain, 0);
  const Problem q = *GenerateProblem({}, Split::kTrain, 0);
  EXPECT_TRUE(p.prompt.starts_with(q.prompt.substr(0, q.question_begin_char - 1)));
}

// Worked examples come before the problem and change nothing else: the
// problem's own story, question, solution and answer stay those of num_shots=0.
TEST(ProblemsTest, ShotsPrependWorkedExamplesAndKeepTheProblem) {
  for (Split split : {Split::kTrain, Split::kTest}) {
    for (int64_t i = 0; i < 30; ++i) {
      const Problem a = *GenerateProblem({}, split, i);
      const Problem b = *GenerateProblem({.num_shots = 2}, split, i);
      EXPECT_EQ(a.solution, b.solution);
      EXPECT_EQ(a.answer, b.answer);
      EXPECT_TRUE(b.prompt.ends_with(a.prompt)) << b.prompt;
      const std::string preamble = b.prompt.substr(0, b.prompt.size() - a.prompt.size());
      size_t answers = 0;
      for (size_t at = preamble.find("Answer: "); at != std::string::npos; at = preamble.find("Answer: ", at + 1)) {
        ++answers;
      }
      EXPECT_EQ(answers, 2u) << preamble;
      EXPECT_TRUE(preamble.ends_with("\n\n"));
      EXPECT_EQ(b.prompt.substr(b.question_begin_char, 9), "Question:");
    }
  }
  EXPECT_FALSE(ValidateOptions({.num_shots = -1}).ok());
  EXPECT_EQ(OptionsFromJson(ToJson(ProblemOptions{.num_shots = 3}))->num_shots, 3);
}

TEST(ProblemsTest, DistractorsAddSentences) {
  auto sentences = [](const Problem& p) {
    const std::string context = p.prompt.substr(0, p.question_begin_char);
    return std::count(context.begin(), context.end(), '.');
  };
  for (int64_t i = 0; i < 30; ++i) {
    const Problem a = *GenerateProblem({.num_distractors = 0}, Split::kVal, i);
    const Problem b = *GenerateProblem({.num_distractors = 5}, Split::kVal, i);
    EXPECT_EQ(sentences(b), sentences(a) + 5);
    EXPECT_EQ(a.answer, b.answer);
  }
}

TEST(ProblemsTest, OpsKnobRestrictsOperations) {
  for (const Problem& p : Gen({.ops = kOpAdd}, Split::kTrain, 200)) {
    EXPECT_EQ(p.solution.find(" - "), std::string::npos);
    EXPECT_EQ(p.solution.find(" * "), std::string::npos);
  }
}

TEST(ProblemsTest, SeedChangesTextNotIds) {
  const Problem a = *GenerateProblem({.seed = 1}, Split::kTrain, 5);
  const Problem b = *GenerateProblem({.seed = 2}, Split::kTrain, 5);
  EXPECT_EQ(a.id, b.id);
  EXPECT_NE(a.prompt, b.prompt);
}

TEST(ProblemsTest, RejectsBadOptions) {
  EXPECT_FALSE(GenerateProblem({.min_steps = 3, .max_steps = 2}, Split::kTrain, 0).ok());
  EXPECT_FALSE(GenerateProblem({.ops = 0}, Split::kTrain, 0).ok());
  EXPECT_FALSE(GenerateProblem({.max_operand = 10, .max_value = 5}, Split::kTrain, 0).ok());
  EXPECT_FALSE(GenerateProblem({}, Split::kTrain, -1).ok());
  // Options that leave a single skeleton cannot fill all three splits.
  const ProblemOptions tiny{.min_steps = 1, .max_steps = 1, .max_operand = 1, .max_value = 2,
                            .ops = kOpAdd};
  int ok = 0;
  for (Split s : {Split::kTrain, Split::kVal, Split::kTest}) ok += GenerateProblem(tiny, s, 0).ok();
  EXPECT_EQ(ok, 1);
}

TEST(ProblemsTest, JsonRoundTrip) {
  const ProblemOptions options{.max_steps = 3, .num_padding = 7,
                               .padding_placement = PaddingPlacement::kAfterStory,
                               .ops = kOpAdd | kOpMul, .seed = 42};
  absl::StatusOr<ProblemOptions> back = OptionsFromJson(ToJson(options));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ToJson(*back), ToJson(options));
  EXPECT_EQ(ToJson(options)["ops"], "+*");
  EXPECT_FALSE(OptionsFromJson(nlohmann::json{{"bogus", 1}}).ok());
  EXPECT_FALSE(OptionsFromJson(nlohmann::json{{"ops", "/"}}).ok());
  EXPECT_FALSE(OptionsFromJson(nlohmann::json{{"max_steps", "four"}}).ok());

  const nlohmann::json j = ToJson(*GenerateProblem({}, Split::kTest, 3));
  EXPECT_EQ(j["id"], "arith-test-000003");
  EXPECT_EQ(j["split"], "test");
  for (const char* key : {"prompt", "solution", "answer", "question_begin_char", "num_steps"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
}

}  // namespace
}  // namespace kvguard::research
