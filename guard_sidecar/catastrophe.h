// File: guard_sidecar/catastrophe.h
//
// Catastrophe labels for one generation, as the mission defines them:
// looping and non-termination are catastrophes (they burn the token budget and
// show no answer) and make up the Catastrophic Failure Rate (CFR); a wrong
// answer is reported beside CFR, never folded into it.
//
// All token indices are into the GENERATED tokens only (prompt excluded).
//
// Product code: the server flags every completion with these (and the research
// loop labels its traces with the same functions), so they live beside the guard.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace kvguard::guard {

// ---- looping ---------------------------------------------------------------

struct LoopResult {
  bool looped = false;
  int64_t onset = -1;  // start of the 2nd occurrence of the offending window
  int64_t period = 0;  // distance between its 1st and 2nd occurrences
};

// The kvguard prototype's rule (research/guard.md §5.3, detectors.py
// `detect_looping_onset`): scan the windows of `window` consecutive tokens
// left to right, counting occurrences (overlapping ones count); the first
// window whose count reaches `repeats` makes the sequence a loop, and the onset
// is the start of that window's SECOND occurrence: the first point where the
// model repeats instead of producing new content.
//
// Consequences (guard.md §5.4: short stutters are features, not loops): a
// p-periodic stretch is flagged only once it spans window + (repeats-1)*p
// tokens, so a 10-token phrase said 3 times (30 tokens) is not a loop with
// window 20, but said 4 times it is; a single token repeated 13 times is not,
// repeated 22 times it is.
//
// One deliberate difference from the prototype: it returns "no loop" outright
// for sequences shorter than window*repeats (60 tokens), which makes the label
// depend on the generation length; here the rule applies at every length.
//
// Rolling hash modulo 2^61-1 with every hash match verified token by token, so
// the result is exact; O(n) expected time for window <= a few hundred.
// window < 1 or repeats < 2 yields "no loop".
LoopResult DetectLoop(const std::vector<int32_t>& tokens, int window = 20, int repeats = 3);

// Non-termination onset proxy: the true onset of "never stops" is unknowable
// (the truncation point is where it is detected, not where it began), so take
// the first token after which the generation stops making progress: the
// position right after the last `ngram`-token window that had never occurred
// before. From there on the model only re-emits windows it already produced.
// With ngram = the loop window (20) this is the loop rule with 2 occurrences,
// restricted to the tail, so short stutters again do not count. If the
// generation kept producing new windows up to its last complete window, the
// onset is the last token (size-1), as in the prototype's detectors.py; the
// prototype's training labels instead used 0.75*max_new_tokens, which
// ignores the content. Returns -1 for an empty sequence.
int64_t ProgressStallOnset(const std::vector<int32_t>& tokens, int ngram = 20);

// ---- answers ---------------------------------------------------------------

// The integer after the LAST answer marker in `text`: "Answer:" (this
// project's problems) or "####" (GSM8K). Spaces/tabs and a '$' may precede the
// number; accepts a minus sign, thousands separators ("1,234"), and a
// fractional part of zeros ("18.00"). A last marker not followed by such an
// integer (e.g. "Answer: 7.5", or truncated "Answer:") means no answer: the
// last commitment counts, an earlier one is not resurrected.
std::optional<int64_t> ExtractAnswer(std::string_view text);

// ---- outcome of one generation ----------------------------------------------

enum class OutcomeKind {
  kCorrect,         // terminated, answer == gold
  kWrongAnswer,     // not catastrophic, answer missing or != gold
  kLoop,            // loop rule fired (takes precedence over everything)
  kNonTermination,  // max tokens, no EOS, no answer (and no loop)
  kUngraded,        // not catastrophic and no gold answer to compare with
};

std::string_view OutcomeKindName(OutcomeKind kind);

struct Outcome {
  OutcomeKind kind = OutcomeKind::kUngraded;  // exclusive label, precedence above
  // Independent flags (a looping generation may also be non-terminated, and
  // may even carry the right answer before it started looping):
  bool looped = false;
  bool non_terminated = false;
  bool catastrophic = false;  // looped || non_terminated: what CFR counts
  bool correct = false;       // extracted answer == gold (accuracy numerator)
  bool wrong_answer = false;  // gold known and answer missing or != gold
  int64_t onset = -1;         // earliest catastrophe onset, -1 if none
  int64_t loop_onset = -1;
  int64_t loop_period = 0;
  int64_t non_termination_onset = -1;
  std::optional<int64_t> answer;  // what ExtractAnswer found
};

struct ClassifyOptions {
  int loop_window = 20;
  int loop_repeats = 3;
  int progress_ngram = 20;  // for ProgressStallOnset
};

// `generated`: the generated token ids; `text`: their decoded text;
// `hit_max_tokens`: generation stopped at max_new_tokens; `saw_eos`: an EOS (or
// stop token) ended it; `gold`: the reference answer, if any.
Outcome Classify(const std::vector<int32_t>& generated, std::string_view text, bool hit_max_tokens,
                 bool saw_eos, std::optional<int64_t> gold, const ClassifyOptions& options = {});

}  // namespace kvguard::guard
