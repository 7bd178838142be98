// File: research/problems.cc
#include "research/problems.h"

#include <algorithm>
#include <array>
#include <bit>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "research/rng.h"

namespace kvguard::research {
namespace {

// Redraws of the arithmetic skeleton before giving up. A split owns at least
// 1/10 of the buckets, so with a non-trivial skeleton space 1000 draws fail
// with probability ~0.9^1000; running out means the options leave almost no
// skeletons, and the caller gets an error instead of a silent split leak.
constexpr int kMaxSkeletonDraws = 1000;
constexpr uint64_t kNumBuckets = 10;
constexpr uint64_t kDomainSalt = 0x61726974682D7631ULL;  // "arith-v1"

struct Item {
  absl::string_view singular;
  absl::string_view plural;
};

// Fixed word lists: a small, regular vocabulary. Changing them changes every
// problem's text (the golden test will say so), never the ids.
constexpr std::array<absl::string_view, 16> kNames = {
    "Tom", "Ann", "Bob", "Sam", "Eva", "Max", "Lily", "Ben",
    "Mia", "Leo", "Zoe", "Jack", "Kim", "Dan", "Amy", "Joe"};
constexpr std::array<Item, 12> kItems = {{{"apple", "apples"},
                                          {"pen", "pens"},
                                          {"book", "books"},
                                          {"card", "cards"},
                                          {"coin", "coins"},
                                          {"egg", "eggs"},
                                          {"shell", "shells"},
                                          {"stamp", "stamps"},
                                          {"marble", "marbles"},
                                          {"cookie", "cookies"},
                                          {"rock", "rocks"},
                                          {"toy", "toys"}}};
// Filler carries no numbers and no names, so it can never be mistaken for a fact.
constexpr std::array<absl::string_view, 16> kFiller = {
    "The sky is blue today.",       "Birds sing in the park.",
    "The bus stops near the school.", "It rains in the evening.",
    "The shop opens early.",        "A cat sleeps on the wall.",
    "The river is calm.",           "Leaves fall from the old tree.",
    "The library is quiet.",        "A dog runs in the field.",
    "The wind is cold.",            "The kitchen smells of bread.",
    "Kids play after class.",       "The road is long and wide.",
    "The lamp is on.",              "Clouds move over the hill."};

struct Step {
  uint32_t op = kOpAdd;
  int64_t operand = 0;
  int64_t before = 0;
  int64_t after = 0;
};

struct Skeleton {
  int64_t initial = 0;
  std::vector<Step> steps;
};

// The people and things one problem talks about.
struct Cast {
  absl::string_view name;
  Item item;
};

uint64_t SplitSalt(Split split) {
  switch (split) {
    case Split::kTrain: return 0x7472616953504C54ULL;
    case Split::kVal: return 0x76616C5F53504C54ULL;
    case Split::kTest: return 0x746573745F504C54ULL;
  }
  return 0;
}

bool BucketInSplit(uint64_t bucket, Split split) {
  switch (split) {
    case Split::kTrain: return bucket < 8;
    case Split::kVal: return bucket == 8;
    case Split::kTest: return bucket == 9;
  }
  return false;
}

// Depends on the arithmetic only, so the split of a skeleton is the same under
// every seed and every surface choice.
uint64_t SkeletonBucket(const Skeleton& skeleton) {
  uint64_t h = HashCombine(kDomainSalt, static_cast<uint64_t>(skeleton.initial));
  for (const Step& step : skeleton.steps) {
    h = HashCombine(h, step.op);
    h = HashCombine(h, static_cast<uint64_t>(step.operand));
  }
  return h % kNumBuckets;
}

uint32_t FeasibleOps(int64_t amount, const ProblemOptions& o) {
  uint32_t ops = 0;
  if (amount + 1 <= o.max_value) ops |= kOpAdd;
  if (amount >= 1) ops |= kOpSub;
  if (amount >= 1 && amount * 2 <= o.max_value) ops |= kOpMul;
  return ops;
}

// Picks one of the set bits of `ops` uniformly.
uint32_t PickOp(uint32_t ops, SplitMix64& rng) {
  int64_t k = rng.Index(std::popcount(ops));
  for (uint32_t bit = 1; bit != 0; bit <<= 1) {
    if ((ops & bit) != 0 && k-- == 0) return bit;
  }
  return kOpAdd;
}

Step DrawStep(int64_t amount, const ProblemOptions& o, SplitMix64& rng) {
  const uint32_t feasible = FeasibleOps(amount, o);
  uint32_t allowed = o.ops & feasible;
  // + or - is always feasible (amount < max_value or amount >= 1).
  if (allowed == 0) allowed = feasible & (kOpAdd | kOpSub);
  Step step{.op = PickOp(allowed, rng), .before = amount};
  switch (step.op) {
    case kOpAdd:
      step.operand = rng.Uniform(1, std::min(o.max_operand, o.max_value - amount));
      step.after = amount + step.operand;
      break;
    case kOpSub:
      step.operand = rng.Uniform(1, std::min(o.max_operand, amount));
      step.after = amount - step.operand;
      break;
    default:
      step.operand = rng.Uniform(2, std::min(o.max_multiplier, o.max_value / amount));
      step.after = amount * step.operand;
      break;
  }
  return step;
}

Skeleton DrawSkeleton(const ProblemOptions& o, SplitMix64& rng) {
  Skeleton skeleton;
  const int64_t num_steps = rng.Uniform(o.min_steps, o.max_steps);
  skeleton.initial = rng.Uniform(1, std::min(o.max_operand, o.max_value));
  int64_t amount = skeleton.initial;
  for (int64_t i = 0; i < num_steps; ++i) {
    skeleton.steps.push_back(DrawStep(amount, o, rng));
    amount = skeleton.steps.back().after;
  }
  return skeleton;
}

absl::StatusOr<Skeleton> DrawSkeletonInSplit(const ProblemOptions& o, Split split,
                                             SplitMix64& rng) {
  for (int attempt = 0; attempt < kMaxSkeletonDraws; ++attempt) {
    Skeleton skeleton = DrawSkeleton(o, rng);
    if (BucketInSplit(SkeletonBucket(skeleton), split)) return skeleton;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "no arithmetic skeleton for split ", std::string(SplitName(split)),
      " after ", kMaxSkeletonDraws, " draws; widen the options"));
}

std::string Count(int64_t n, const Item& item) {
  return absl::StrCat(n, " ", n == 1 ? item.singular : item.plural);
}

absl::string_view OtherName(absl::string_view name, SplitMix64& rng) {
  absl::string_view other = name;
  while (other == name) other = kNames[rng.Index(kNames.size())];
  return other;
}

// The story sentence for one step; the solution repeats it verbatim so the
// model learns to copy the relevant fact before computing.
std::string StepSentence(const Step& step, const Cast& cast, SplitMix64& rng) {
  const std::string count = Count(step.operand, cast.item);
  const absl::string_view n = cast.name;
  switch (step.op) {
    case kOpAdd:
      switch (rng.Index(3)) {
        case 0: return absl::StrCat(n, " gets ", step.operand, " more ", cast.item.plural, ".");
        case 1: return absl::StrCat(n, " finds ", step.operand, " more ", cast.item.plural, ".");
        default: return absl::StrCat(OtherName(n, rng), " gives ", n, " ", count, ".");
      }
    case kOpSub:
      switch (rng.Index(3)) {
        case 0: return absl::StrCat(n, " gives ", count, " to ", OtherName(n, rng), ".");
        case 1: return absl::StrCat(n, " loses ", count, ".");
        default: return absl::StrCat(n, " sells ", count, ".");
      }
    default:
      return absl::StrCat("Then ", n, " has ", step.operand, " times as many ",
                          cast.item.plural, ".");
  }
}

// An irrelevant numeric fact: never about the tracked (name, item) pair, but
// always sharing the name or the item pattern so it has to be read, not skipped.
std::string Distractor(const Cast& cast, const ProblemOptions& o, SplitMix64& rng) {
  const int64_t n = rng.Uniform(1, o.max_operand);
  const Item& any_item = kItems[rng.Index(kItems.size())];
  switch (rng.Index(3)) {
    case 0: return absl::StrCat(OtherName(cast.name, rng), " has ", Count(n, any_item), ".");
    case 1: {
      Item other = cast.item;
      while (other.plural == cast.item.plural) other = kItems[rng.Index(kItems.size())];
      return absl::StrCat(cast.name, " has ", Count(n, other), ".");
    }
    default:
      return absl::StrCat(OtherName(cast.name, rng), " gets ", n, " more ", any_item.plural, ".");
  }
}

// Inserts `extra` into `base` at uniformly drawn gaps, keeping both orders.
std::vector<std::string> InsertAtRandomGaps(std::vector<std::string> base,
                                            std::vector<std::string> extra,
                                            SplitMix64& rng) {
  std::vector<std::vector<std::string>> at_gap(base.size() + 1);
  for (std::string& sentence : extra) {
    at_gap[rng.Index(static_cast<int64_t>(at_gap.size()))].push_back(std::move(sentence));
  }
  std::vector<std::string> out;
  out.reserve(base.size() + extra.size());
  for (size_t gap = 0; gap < at_gap.size(); ++gap) {
    for (std::string& sentence : at_gap[gap]) out.push_back(std::move(sentence));
    if (gap < base.size()) out.push_back(std::move(base[gap]));
  }
  return out;
}

std::vector<std::string> AddPadding(std::vector<std::string> context,
                                    const ProblemOptions& o, SplitMix64& rng) {
  std::vector<std::string> filler;
  for (int i = 0; i < o.num_padding; ++i) {
    filler.emplace_back(kFiller[rng.Index(kFiller.size())]);
  }
  switch (o.padding_placement) {
    case PaddingPlacement::kInterleaved:
      return InsertAtRandomGaps(std::move(context), std::move(filler), rng);
    case PaddingPlacement::kBeforeStory:
      filler.insert(filler.end(), context.begin(), context.end());
      return filler;
    case PaddingPlacement::kAfterStory:
      context.insert(context.end(), filler.begin(), filler.end());
      return context;
  }
  return context;
}

char OpChar(uint32_t op) { return op == kOpAdd ? '+' : op == kOpSub ? '-' : '*'; }

struct Story {
  std::string context;   // the story sentences with distractors and padding
  std::string question;  // "Question: ...?\nSolution:\n"
  std::string solution;
  int64_t answer = 0;
  int num_steps = 0;
};

// Draw order matters for reproducibility: skeleton, cast, story, distractors,
// padding. Padding comes last so adding filler leaves everything else intact.
absl::StatusOr<Story> DrawStory(const ProblemOptions& o, Split split, SplitMix64& rng) {
  absl::StatusOr<Skeleton> skeleton = DrawSkeletonInSplit(o, split, rng);
  if (!skeleton.ok()) return skeleton.status();
  const Cast cast{kNames[rng.Index(kNames.size())], kItems[rng.Index(kItems.size())]};

  const std::string opening = absl::StrCat(cast.name, " has ", Count(skeleton->initial, cast.item), ".");
  std::vector<std::string> story = {opening};
  std::vector<std::string> solution = {opening};
  for (const Step& step : skeleton->steps) {
    story.push_back(StepSentence(step, cast, rng));
    solution.push_back(absl::StrFormat("%s %d %c %d = %d.", story.back(), step.before,
                                       OpChar(step.op), step.operand, step.after));
  }
  const int64_t answer = skeleton->steps.empty() ? skeleton->initial : skeleton->steps.back().after;
  solution.push_back(absl::StrCat("Answer: ", answer));

  std::vector<std::string> distractors;
  for (int i = 0; i < o.num_distractors; ++i) distractors.push_back(Distractor(cast, o, rng));
  std::vector<std::string> context =
      AddPadding(InsertAtRandomGaps(std::move(story), std::move(distractors), rng), o, rng);

  Story out;
  out.context = absl::StrJoin(context, " ");
  out.question = absl::StrCat("Question: How many ", cast.item.plural, " does ", cast.name, " have now?\nSolution:\n");
  out.solution = absl::StrJoin(solution, "\n");
  out.answer = answer;
  out.num_steps = static_cast<int>(skeleton->steps.size());
  return out;
}

// The problem's own story is drawn first, then its worked examples (shots), so
// num_shots changes the prompt's preamble and nothing else. Shots are drawn in
// the problem's split, so a test prompt's examples are test skeletons too.
absl::StatusOr<Problem> Build(const ProblemOptions& o, Split split, int64_t index) {
  SplitMix64 rng(HashCombine(HashCombine(HashCombine(kDomainSalt, o.seed), SplitSalt(split)),
                             static_cast<uint64_t>(index)));
  absl::StatusOr<Story> story = DrawStory(o, split, rng);
  if (!story.ok()) return story.status();
  Problem problem{.id = ProblemId(split, index), .split = split, .index = index};
  for (int s = 0; s < o.num_shots; ++s) {
    absl::StatusOr<Story> shot = DrawStory(o, split, rng);
    if (!shot.ok()) return shot.status();
    absl::StrAppend(&problem.prompt, shot->context, "\n", shot->question, shot->solution, "\n\n");
  }
  absl::StrAppend(&problem.prompt, story->context, "\n");
  problem.question_begin_char = static_cast<int64_t>(problem.prompt.size());
  problem.prompt += story->question;
  problem.solution = story->solution;
  problem.answer = story->answer;
  problem.num_steps = story->num_steps;
  return problem;
}

std::string OpsToString(uint32_t ops) {
  std::string s;
  if (ops & kOpAdd) s += '+';
  if (ops & kOpSub) s += '-';
  if (ops & kOpMul) s += '*';
  return s;
}

absl::StatusOr<uint32_t> OpsFromString(std::string_view s) {
  uint32_t ops = 0;
  for (char c : s) {
    if (c == '+') ops |= kOpAdd;
    else if (c == '-') ops |= kOpSub;
    else if (c == '*') ops |= kOpMul;
    else return absl::InvalidArgumentError(absl::StrCat("unknown op '", std::string(1, c), "'"));
  }
  return ops;
}

constexpr std::array<std::pair<PaddingPlacement, std::string_view>, 3> kPlacements = {{
    {PaddingPlacement::kInterleaved, "interleaved"},
    {PaddingPlacement::kBeforeStory, "before_story"},
    {PaddingPlacement::kAfterStory, "after_story"},
}};

}  // namespace

std::string_view SplitName(Split split) {
  switch (split) {
    case Split::kTrain: return "train";
    case Split::kVal: return "val";
    case Split::kTest: return "test";
  }
  return "unknown";
}

absl::StatusOr<Split> ParseSplit(std::string_view name) {
  for (Split s : {Split::kTrain, Split::kVal, Split::kTest}) {
    if (name == SplitName(s)) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown split '", std::string(name), "'"));
}

absl::Status ValidateOptions(const ProblemOptions& o) {
  if (o.min_steps < 1 || o.max_steps < o.min_steps || o.max_steps > 32) {
    return absl::InvalidArgumentError("steps must satisfy 1 <= min_steps <= max_steps <= 32");
  }
  if (o.max_operand < 1 || o.max_value < o.max_operand || o.max_value > 1'000'000'000) {
    return absl::InvalidArgumentError("need 1 <= max_operand <= max_value <= 1e9");
  }
  if ((o.ops & kOpMul) != 0 && o.max_multiplier < 2) {
    return absl::InvalidArgumentError("max_multiplier must be >= 2 when * is allowed");
  }
  if (o.ops == 0 || (o.ops & ~kAllOps) != 0) {
    return absl::InvalidArgumentError("ops must be a non-empty set of kOpAdd|kOpSub|kOpMul");
  }
  if (o.num_distractors < 0 || o.num_padding < 0 || o.num_shots < 0 || o.num_shots > 16) {
    return absl::InvalidArgumentError("num_distractors and num_padding must be >= 0, num_shots in [0, 16]");
  }
  return absl::OkStatus();
}

std::string ProblemId(Split split, int64_t index) {
  return absl::StrFormat("arith-%s-%06d", SplitName(split), index);
}

absl::StatusOr<Problem> GenerateProblem(const ProblemOptions& options, Split split,
                                        int64_t index) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  if (index < 0) return absl::InvalidArgumentError("index must be >= 0");
  return Build(options, split, index);
}

absl::StatusOr<std::vector<Problem>> GenerateProblems(const ProblemOptions& options,
                                                      Split split, int64_t begin,
                                                      int64_t count) {
  if (count < 0) return absl::InvalidArgumentError("count must be >= 0");
  std::vector<Problem> problems;
  problems.reserve(static_cast<size_t>(count));
  for (int64_t i = begin; i < begin + count; ++i) {
    absl::StatusOr<Problem> p = GenerateProblem(options, split, i);
    if (!p.ok()) return p.status();
    problems.push_back(*std::move(p));
  }
  return problems;
}

nlohmann::json ToJson(const Problem& p) {
  return {{"id", p.id},
          {"split", SplitName(p.split)},
          {"index", p.index},
          {"prompt", p.prompt},
          {"solution", p.solution},
          {"answer", p.answer},
          {"question_begin_char", p.question_begin_char},
          {"num_steps", p.num_steps}};
}

nlohmann::json ToJson(const ProblemOptions& o) {
  std::string_view placement;
  for (const auto& [value, name] : kPlacements) {
    if (value == o.padding_placement) placement = name;
  }
  return {{"min_steps", o.min_steps},           {"max_steps", o.max_steps},
          {"max_operand", o.max_operand},       {"max_multiplier", o.max_multiplier},
          {"max_value", o.max_value},           {"num_distractors", o.num_distractors},
          {"num_padding", o.num_padding},       {"padding_placement", placement},
          {"ops", OpsToString(o.ops)},          {"seed", o.seed},
          {"num_shots", o.num_shots}};
}

absl::StatusOr<ProblemOptions> OptionsFromJson(const nlohmann::json& json) {
  if (!json.is_object()) return absl::InvalidArgumentError("options must be a JSON object");
  ProblemOptions o;
  try {
    for (const auto& [key, value] : json.items()) {
      if (key == "min_steps") o.min_steps = value.get<int>();
      else if (key == "max_steps") o.max_steps = value.get<int>();
      else if (key == "max_operand") o.max_operand = value.get<int64_t>();
      else if (key == "max_multiplier") o.max_multiplier = value.get<int64_t>();
      else if (key == "max_value") o.max_value = value.get<int64_t>();
      else if (key == "num_distractors") o.num_distractors = value.get<int>();
      else if (key == "num_padding") o.num_padding = value.get<int>();
      else if (key == "num_shots") o.num_shots = value.get<int>();
      else if (key == "seed") o.seed = value.get<uint64_t>();
      else if (key == "ops") {
        absl::StatusOr<uint32_t> ops = OpsFromString(value.get<std::string>());
        if (!ops.ok()) return ops.status();
        o.ops = *ops;
      } else if (key == "padding_placement") {
        const std::string name = value.get<std::string>();
        auto it = std::find_if(kPlacements.begin(), kPlacements.end(),
                               [&](const auto& p) { return p.second == name; });
        if (it == kPlacements.end()) {
          return absl::InvalidArgumentError(absl::StrCat("unknown padding_placement '", name, "'"));
        }
        o.padding_placement = it->first;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown option '", key, "'"));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad option value: ", e.what()));
  }
  if (absl::Status s = ValidateOptions(o); !s.ok()) return s;
  return o;
}

}  // namespace kvguard::research
