// File: research/problems.h
//
// Deterministic generator of multi-step arithmetic word problems with a
// chain-of-thought solution, for training and evaluating a tiny language model
// under KV-cache compression. The vocabulary is deliberately small and regular
// (short sentences, names and items from fixed lists, numbers as digits), so a
// model of a few million parameters can learn the task and failures can be
// attributed to compression rather than to the task.
//
// A problem tracks one quantity (Tom's apples) through 2..4 operations stated
// as separate sentences, mixed with distractor facts (other people, other
// items) and optional filler sentences, then asks for the final amount:
//
//   prompt:   "Tom has 3 apples. Ann has 7 pens. Tom gets 5 more apples. ...
//              \nQuestion: How many apples does Tom have now?\nSolution:\n"
//   solution: "Tom has 3 apples.\nTom gets 5 more apples. 3 + 5 = 8.\n...Answer: 8"
//
// Reproducibility: each problem is a pure function of (options, split, index),
// drawn from its own SplitMix64 stream, so problem i never depends on problems
// 0..i-1 and the text is identical on every platform.
//
// Split disjointness is by construction: the arithmetic skeleton of a problem
// (initial value, operations, operands) is hashed into 10 buckets; 0..7 belong
// to train, 8 to val, 9 to test, and the generator redraws until the skeleton
// lands in its split's buckets. So no val/test problem shares even its
// arithmetic with a train problem, whatever the seed, names or padding.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace kvguard::research {

enum class Split { kTrain, kVal, kTest };

std::string_view SplitName(Split split);
absl::StatusOr<Split> ParseSplit(std::string_view name);

// Operation bit flags for ProblemOptions::ops.
inline constexpr uint32_t kOpAdd = 1u << 0;
inline constexpr uint32_t kOpSub = 1u << 1;
inline constexpr uint32_t kOpMul = 1u << 2;
inline constexpr uint32_t kAllOps = kOpAdd | kOpSub | kOpMul;

// Where the filler sentences go.
enum class PaddingPlacement {
  kInterleaved,  // at random gaps among the story sentences
  kBeforeStory,  // all before the first sentence (a long preamble)
  kAfterStory,   // between the story and the question: the facts are far from
                 // the question, which is what recency-based compressors evict
};

struct ProblemOptions {
  int min_steps = 2;            // operations per problem, drawn in [min, max]
  int max_steps = 4;
  int64_t max_operand = 20;     // initial amount and +/- operands in [1, max_operand]
  int64_t max_multiplier = 3;   // * operands in [2, max_multiplier]
  int64_t max_value = 500;      // every intermediate amount stays in [0, max_value]
  int num_distractors = 1;      // irrelevant numeric facts in the context
  int num_padding = 0;          // filler sentences (no numbers, no names)
  PaddingPlacement padding_placement = PaddingPlacement::kInterleaved;
  // Worked examples (story, question, solution) before the problem: context a
  // model does not need, as in few-shot prompts, so moderate compression can
  // drop it and high compression reaches the facts that matter.
  int num_shots = 0;
  // Allowed operations (kOp* flags). When none of them can keep the amount in
  // [0, max_value] at some step, that step falls back to + or - (documented
  // rather than failing: it only happens with extreme settings).
  uint32_t ops = kAllOps;
  uint64_t seed = 0;  // changes the text, never the ids
};

absl::Status ValidateOptions(const ProblemOptions& options);

struct Problem {
  std::string id;             // "arith-<split>-<index, 6+ digits>", depends on nothing else
  Split split = Split::kTrain;
  int64_t index = 0;
  std::string prompt;         // context + question + solution cue
  std::string solution;       // chain of thought, last line "Answer: N"
  int64_t answer = 0;         // the final amount, in [0, max_value]
  int64_t question_begin_char = 0;  // offset of "Question:" in prompt (for Q2C)
  int num_steps = 0;
};

// The stable id of problem `index` of `split`.
std::string ProblemId(Split split, int64_t index);

// Problem `index` (>= 0) of `split`. Errors only on invalid options, or when the
// options admit so few arithmetic skeletons that none falls in the split.
absl::StatusOr<Problem> GenerateProblem(const ProblemOptions& options, Split split,
                                        int64_t index);

// Problems begin .. begin+count-1 of `split`.
absl::StatusOr<std::vector<Problem>> GenerateProblems(const ProblemOptions& options,
                                                      Split split, int64_t begin,
                                                      int64_t count);

// JSON views for datasets and experiment records. OptionsFromJson starts from
// the defaults, overrides the keys present, and rejects unknown keys.
nlohmann::json ToJson(const Problem& problem);
nlohmann::json ToJson(const ProblemOptions& options);
absl::StatusOr<ProblemOptions> OptionsFromJson(const nlohmann::json& json);

}  // namespace kvguard::research
