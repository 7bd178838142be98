// File: guard_sidecar/catastrophe.cc
#include "guard_sidecar/catastrophe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/container/flat_hash_map.h"

namespace kvguard::guard {
namespace {

// ---- exact window identification by rolling hash -----------------------------

// Polynomial hashing modulo the Mersenne prime 2^61-1. Modulo 2^64 would be
// cheaper but has systematic collisions (Thue-Morse strings); with a prime
// modulus collisions are ~n^2/2^61 and are in any case caught by verification.
constexpr uint64_t kMod = (1ULL << 61) - 1;
constexpr uint64_t kBase = 0x1F3D5B79A2C4E687ULL % kMod;

uint64_t MulMod(uint64_t a, uint64_t b) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  const uint64_t r = static_cast<uint64_t>(p & kMod) + static_cast<uint64_t>(p >> 61);
  return r >= kMod ? r - kMod : r;
}

uint64_t AddMod(uint64_t a, uint64_t b) {
  const uint64_t r = a + b;
  return r >= kMod ? r - kMod : r;
}

// Token ids map to 1..2^32 so that id 0 still contributes to the hash.
uint64_t Digit(int32_t token) { return static_cast<uint64_t>(static_cast<uint32_t>(token)) + 1; }

// Visits the windows of `w` tokens in order and tells, for each, the distinct
// window it equals (verified token by token) with its occurrence history.
class WindowTable {
 public:
  struct Record {
    int64_t first = -1;
    int64_t second = -1;
    int64_t count = 0;
    int32_t next = -1;  // next distinct window with the same hash
  };

  WindowTable(const std::vector<int32_t>& tokens, int w) : tokens_(tokens), w_(w) {
    for (int i = 0; i < w_; ++i) {
      hash_ = AddMod(MulMod(hash_, kBase), Digit(tokens_[i]));
      if (i > 0) top_power_ = MulMod(top_power_, kBase);
    }
    heads_.reserve(tokens_.size());
  }

  int64_t num_windows() const { return static_cast<int64_t>(tokens_.size()) - w_ + 1; }

  // Registers the window starting at `start` (call with 0, 1, 2, ... in order)
  // and returns its record, whose count includes this occurrence.
  const Record& Visit(int64_t start) {
    if (start > 0) Roll(start);
    auto [it, inserted] = heads_.try_emplace(hash_, -1);
    int32_t* link = &it->second;
    while (*link >= 0) {
      Record& r = records_[*link];
      if (std::equal(tokens_.begin() + r.first, tokens_.begin() + r.first + w_,
                     tokens_.begin() + start)) {
        if (++r.count == 2) r.second = start;
        return r;
      }
      link = &r.next;
    }
    *link = static_cast<int32_t>(records_.size());
    records_.push_back({.first = start, .count = 1});
    return records_.back();
  }

 private:
  // Moves the hash from the window at start-1 to the window at start.
  void Roll(int64_t start) {
    const uint64_t out = MulMod(Digit(tokens_[start - 1]), top_power_);
    hash_ = AddMod(hash_, kMod - out);
    hash_ = AddMod(MulMod(hash_, kBase), Digit(tokens_[start + w_ - 1]));
  }

  const std::vector<int32_t>& tokens_;
  const int w_;
  uint64_t hash_ = 0;
  uint64_t top_power_ = 1;  // kBase^(w-1)
  absl::flat_hash_map<uint64_t, int32_t> heads_;
  std::vector<Record> records_;
};

// ---- answer parsing -------------------------------------------------------------

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Reads "[-]d+(,ddd)*(.0+)?" at the start of `s` (after skippable decoration).
std::optional<int64_t> ParseInteger(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && std::string_view(" \t\r\n*$").find(s[i]) != std::string_view::npos) ++i;
  const bool negative = i < s.size() && s[i] == '-';
  if (negative) ++i;
  std::string digits;
  while (i < s.size() && IsDigit(s[i])) digits += s[i++];
  if (digits.empty()) return std::nullopt;
  // Thousands groups: exactly three digits after each comma, else the comma
  // ends the number ("3, 4" is a list, not 34).
  while (i + 3 < s.size() && s[i] == ',' && IsDigit(s[i + 1]) && IsDigit(s[i + 2]) &&
         IsDigit(s[i + 3]) && (i + 4 == s.size() || !IsDigit(s[i + 4]))) {
    digits.append(s.substr(i + 1, 3));
    i += 4;
  }
  if (i + 1 < s.size() && s[i] == '.' && IsDigit(s[i + 1])) {
    for (++i; i < s.size() && IsDigit(s[i]); ++i) {
      if (s[i] != '0') return std::nullopt;  // a non-integer answer
    }
  }
  if (digits.size() > 18) return std::nullopt;  // would overflow int64
  const int64_t value = std::stoll(digits);
  return negative ? -value : value;
}

}  // namespace

LoopResult DetectLoop(const std::vector<int32_t>& tokens, int window, int repeats) {
  if (window < 1 || repeats < 2 || tokens.size() < static_cast<size_t>(window)) return {};
  WindowTable table(tokens, window);
  for (int64_t start = 0; start < table.num_windows(); ++start) {
    const WindowTable::Record& r = table.Visit(start);
    if (r.count >= repeats) {
      return {.looped = true, .onset = r.second, .period = r.second - r.first};
    }
  }
  return {};
}

int64_t ProgressStallOnset(const std::vector<int32_t>& tokens, int ngram) {
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) return 0;
  if (ngram < 1 || n < ngram) return n - 1;  // no complete window: no evidence of a stall
  WindowTable table(tokens, ngram);
  int64_t last_novel = 0;
  for (int64_t start = 0; start < table.num_windows(); ++start) {
    if (table.Visit(start).count == 1) last_novel = start;
  }
  if (last_novel == table.num_windows() - 1) return n - 1;  // progress to the end
  return last_novel + 1;
}

std::optional<int64_t> ExtractAnswer(std::string_view text) {
  constexpr std::string_view kAnswer = "Answer:";
  constexpr std::string_view kGsm8k = "####";
  const size_t a = text.rfind(kAnswer);
  const size_t g = text.rfind(kGsm8k);
  if (a == std::string_view::npos && g == std::string_view::npos) return std::nullopt;
  // The later marker wins; npos (absent) is the largest size_t, so compare
  // explicitly rather than with max().
  const bool use_answer = g == std::string_view::npos || (a != std::string_view::npos && a > g);
  const size_t begin = use_answer ? a + kAnswer.size() : g + kGsm8k.size();
  return ParseInteger(text.substr(begin));
}

std::string_view OutcomeKindName(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kCorrect:
      return "correct";
    case OutcomeKind::kWrongAnswer:
      return "wrong_answer";
    case OutcomeKind::kLoop:
      return "loop";
    case OutcomeKind::kNonTermination:
      return "non_termination";
    case OutcomeKind::kUngraded:
      return "ungraded";
  }
  return "unknown";
}

Outcome Classify(const std::vector<int32_t>& generated, std::string_view text, bool hit_max_tokens,
                 bool saw_eos, std::optional<int64_t> gold, const ClassifyOptions& options) {
  Outcome out;
  out.answer = ExtractAnswer(text);
  const LoopResult loop = DetectLoop(generated, options.loop_window, options.loop_repeats);
  out.looped = loop.looped;
  out.loop_onset = loop.onset;
  out.loop_period = loop.period;
  // An answer line before the budget ran out counts as terminating: the
  // mission's rule is "max tokens without EOS or answer".
  out.non_terminated = hit_max_tokens && !saw_eos && !out.answer.has_value();
  if (out.non_terminated) {
    out.non_termination_onset = ProgressStallOnset(generated, options.progress_ngram);
  }
  out.catastrophic = out.looped || out.non_terminated;
  for (int64_t onset : {out.loop_onset, out.non_termination_onset}) {
    if (onset >= 0 && (out.onset < 0 || onset < out.onset)) out.onset = onset;
  }
  if (gold.has_value()) {
    out.correct = out.answer.has_value() && *out.answer == *gold;
    out.wrong_answer = !out.correct;
  }
  if (out.looped)
    out.kind = OutcomeKind::kLoop;
  else if (out.non_terminated)
    out.kind = OutcomeKind::kNonTermination;
  else if (!gold.has_value())
    out.kind = OutcomeKind::kUngraded;
  else
    out.kind = out.correct ? OutcomeKind::kCorrect : OutcomeKind::kWrongAnswer;
  return out;
}

}  // namespace kvguard::guard
