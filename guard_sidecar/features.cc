#include "guard_sidecar/features.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvguard::guard {
namespace {

// Log-probabilities below this are treated as this (keeps -inf out of means).
constexpr float kLogprobFloor = -100.0f;
constexpr std::string_view kGroupPrefix = "group:";

// Sorted, for binary search. The prototype's list of transition words
// (guard.md 2.4: "so, wait, therefore, hmm, ..."), plus the few this
// project's answer format uses.
constexpr std::array<std::string_view, 34> kThinkingWords = {
    "actually",  "alternatively", "answer", "because", "but",  "calculate", "check",
    "compute",   "finally",       "first",  "hence",   "hmm",  "however",   "let",
    "maybe",     "means",         "next",   "note",    "now",  "ok",        "okay",
    "perhaps",   "recall",        "second", "since",   "so",   "step",      "then",
    "therefore", "third",         "thus",   "verify",  "wait", "well"};
static_assert(std::is_sorted(kThinkingWords.begin(), kThinkingWords.end()));

float FiniteOr(float v, float fallback) { return std::isfinite(v) ? v : fallback; }
float Logprob(float v) { return std::isnan(v) ? kLogprobFloor : std::max(v, kLogprobFloor); }

// -sum p ln p over the entries of a distribution given by log-weights
// (renormalised here; HALT eq. 4 and 7).
double EntropyOfLogWeights(const std::vector<float>& logw) {
  if (logw.empty()) return 0.0;
  const double m = *std::max_element(logw.begin(), logw.end());
  double z = 0;
  for (float l : logw) z += std::exp(l - m);
  double h = 0;
  for (float l : logw) {
    const double p = std::exp(l - m) / z;
    if (p > 0) h -= p * std::log(p);
  }
  return h;
}

double BinaryEntropy(double p) {
  if (p <= 0 || p >= 1) return 0.0;
  return -p * std::log(p) - (1 - p) * std::log(1 - p);
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::string AllNames() {
  std::string out;
  for (std::string_view n : kFeatureNames) out.append(out.empty() ? "" : ",").append(n);
  return out;
}

}  // namespace

std::string_view FeatureGroupName(FeatureGroup group) {
  switch (group) {
    case FeatureGroup::kLogit:
      return "logit";
    case FeatureGroup::kRolling:
      return "rolling";
    case FeatureGroup::kRepetition:
      return "repetition";
    case FeatureGroup::kThinking:
      return "thinking";
    case FeatureGroup::kPosition:
      return "position";
    case FeatureGroup::kCache:
      return "cache";
  }
  return "?";
}

bool IsThinkingWord(std::string_view token_text) {
  size_t b = 0, e = token_text.size();
  while (b < e && !absl::ascii_isalpha(static_cast<unsigned char>(token_text[b]))) ++b;
  while (e > b && !absl::ascii_isalpha(static_cast<unsigned char>(token_text[e - 1]))) --e;
  if (b == e || e - b > 16) return false;
  const std::string word = absl::AsciiStrToLower(std::string(token_text.substr(b, e - b)));
  return std::binary_search(kThinkingWords.begin(), kThinkingWords.end(), std::string_view(word));
}

// ---- FeatureSchema ------------------------------------------------------------

FeatureSchema::FeatureSchema(std::vector<Feature> columns) : columns_(std::move(columns)) {
  for (Feature f : columns_) names_.emplace_back(kFeatureNames[f]);
}

FeatureSchema FeatureSchema::All() {
  std::vector<Feature> all;
  for (int i = 0; i < kNumFeatures; ++i) all.push_back(static_cast<Feature>(i));
  return FeatureSchema(std::move(all));
}

absl::StatusOr<FeatureSchema> FeatureSchema::FromNames(const std::vector<std::string>& names) {
  std::vector<Feature> columns;
  std::array<bool, kNumFeatures> used{};
  for (const std::string& name : names) {
    auto it = std::find(kFeatureNames.begin(), kFeatureNames.end(), name);
    if (it == kFeatureNames.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown feature '", name, "' (this guard computes: ", AllNames(), ")"));
    }
    const int index = static_cast<int>(it - kFeatureNames.begin());
    if (used[index]) return absl::InvalidArgumentError(absl::StrCat("feature '", name, "' twice"));
    used[index] = true;
    columns.push_back(static_cast<Feature>(index));
  }
  if (columns.empty())
    return absl::InvalidArgumentError("a feature schema needs at least 1 feature");
  return FeatureSchema(std::move(columns));
}

absl::StatusOr<FeatureSchema> FeatureSchema::Excluding(const std::vector<std::string>& names) {
  std::array<bool, kNumFeatures> drop{};
  for (const std::string& name : names) {
    bool matched = false;
    for (int i = 0; i < kNumFeatures; ++i) {
      const bool hit = name.starts_with(kGroupPrefix)
                           ? FeatureGroupName(kFeatureInfo[i].group) ==
                                 std::string_view(name).substr(kGroupPrefix.size())
                           : kFeatureNames[i] == name;
      if (hit) drop[i] = matched = true;
    }
    if (!matched) return absl::InvalidArgumentError(absl::StrCat("unknown feature '", name, "'"));
  }
  std::vector<std::string> kept;
  for (int i = 0; i < kNumFeatures; ++i) {
    if (!drop[i]) kept.emplace_back(kFeatureNames[i]);
  }
  return FromNames(kept);
}

absl::StatusOr<FeatureSchema> FeatureSchema::ForAblation(std::string_view ablation) {
  if (ablation == "full" || ablation.empty()) return All();
  if (ablation == "no_ratio") return Excluding({"group:cache"});
  if (ablation == "no_repetition") return Excluding({"group:repetition"});
  if (ablation == "logit_only") {
    return Excluding({"group:repetition", "group:thinking", "group:position", "group:cache"});
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown ablation '", std::string(ablation),
                                                 "' (full, no_ratio, no_repetition, logit_only)"));
}

bool FeatureSchema::Contains(Feature f) const {
  return std::find(columns_.begin(), columns_.end(), f) != columns_.end();
}

void FeatureSchema::Project(const FeatureRow& row, float* out) const {
  for (size_t i = 0; i < columns_.size(); ++i) out[i] = row[columns_[i]];
}

std::vector<float> FeatureSchema::ProjectRows(std::span<const float> full_rows) const {
  const size_t n = full_rows.size() / kNumFeatures;
  std::vector<float> out(n * columns_.size());
  for (size_t r = 0; r < n; ++r) {
    const float* src = full_rows.data() + r * kNumFeatures;
    for (size_t i = 0; i < columns_.size(); ++i) out[r * columns_.size() + i] = src[columns_[i]];
  }
  return out;
}

// ---- Ring ---------------------------------------------------------------------

void SessionFeatures::Ring::Push(double v) {
  values_[count_ % static_cast<int64_t>(values_.size())] = v;
  ++count_;
}

int SessionFeatures::Ring::Available(int w) const {
  return static_cast<int>(std::min<int64_t>({w, count_, static_cast<int64_t>(values_.size())}));
}

double SessionFeatures::Ring::Back(int back) const {
  const int64_t cap = static_cast<int64_t>(values_.size());
  return values_[(count_ - 1 - back) % cap];
}

double SessionFeatures::Ring::Sum(int w) const {
  double s = 0;
  for (int i = 0, n = Available(w); i < n; ++i) s += Back(i);
  return s;
}

double SessionFeatures::Ring::Mean(int w) const {
  const int n = Available(w);
  return n == 0 ? 0.0 : Sum(w) / n;
}

double SessionFeatures::Ring::Max(int w) const {
  const int n = Available(w);
  if (n == 0) return 0.0;
  double m = Back(0);
  for (int i = 1; i < n; ++i) m = std::max(m, Back(i));
  return m;
}

double SessionFeatures::Ring::Min(int w) const {
  const int n = Available(w);
  if (n == 0) return 0.0;
  double m = Back(0);
  for (int i = 1; i < n; ++i) m = std::min(m, Back(i));
  return m;
}

double SessionFeatures::Ring::Std(int w) const {
  const int n = Available(w);
  if (n < 2) return 0.0;
  // Two passes over <= 64 values: exact, no running-sum drift.
  const double mean = Mean(w);
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += (Back(i) - mean) * (Back(i) - mean);
  return std::sqrt(ss / n);
}

// ---- NgramCounter -----------------------------------------------------------------

namespace {
constexpr uint64_t kMod = (uint64_t{1} << 61) - 1;
constexpr uint64_t kBase = 0x1F3D5B79A2C4E681ull % kMod;
uint64_t MulMod(uint64_t a, uint64_t b) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  uint64_t r = static_cast<uint64_t>(p & kMod) + static_cast<uint64_t>(p >> 61);
  return r >= kMod ? r - kMod : r;
}
uint64_t AddMod(uint64_t a, uint64_t b) { return a + b >= kMod ? a + b - kMod : a + b; }
// Token ids arrive as doubles from the wire (int32): negative or huge ones
// are a bad report, not undefined behaviour (found by fuzz_guard_batch).
uint64_t TokenValue(double token) {
  if (!(token >= 0 && token < 4294967296.0)) return 0;
  return static_cast<uint64_t>(static_cast<uint32_t>(token)) + 1;
}
}  // namespace

SessionFeatures::NgramCounter::NgramCounter(int n) : n_(n) {
  for (int i = 1; i < n; ++i) power_ = MulMod(power_, kBase);
}

int32_t SessionFeatures::NgramCounter::Add(const Ring& tokens) {
  if (tokens.count() > n_) {  // slide: drop the token that left the window
    hash_ = AddMod(hash_, kMod - MulMod(TokenValue(tokens.Back(n_)), power_));
  }
  hash_ = AddMod(MulMod(hash_, kBase), TokenValue(tokens.Back(0)));
  if (tokens.count() < n_) return 0;
  return counts_[hash_]++;
}

// ---- SessionFeatures ----------------------------------------------------------------

SessionFeatures::SessionFeatures(SessionInfo info) : info_(info) {}

void SessionFeatures::Update(const v1::StepReport& r, FeatureRow& out) {
  const float entropy = std::max(0.0f, FiniteOr(r.entropy(), 0.0f));
  const float chosen = Logprob(r.chosen_logprob());
  entropy_.Push(entropy);
  logprob_.Push(chosen);
  token_ids_.Push(r.token_id());
  last_thinking_ = IsThinkingWord(r.token_text());
  thinking_.Push(last_thinking_ ? 1.0 : 0.0);
  LogitFeatures(r, entropy, chosen, out);
  RollingFeatures(out);
  RepetitionFeatures(r.token_id(), out);
  out[kThinking] = last_thinking_ ? 1.0f : 0.0f;
  out[kThinkingW32] = static_cast<float>(thinking_.Sum(32));
  out[kPosition] = static_cast<float>(r.step());
  out[kPositionFrac] =
      info_.max_new_tokens > 0 ? static_cast<float>(r.step()) / info_.max_new_tokens : 0.0f;
  CacheFeatures(r, out);
  last_position_ = r.has_kv() && r.kv().total_tokens() > 0
                       ? static_cast<int32_t>(r.kv().total_tokens())
                       : static_cast<int32_t>(info_.prompt_tokens + r.step());
  prev_entropy_ = entropy;
  ++tokens_;
}

void SessionFeatures::LogitFeatures(const v1::StepReport& r, float entropy, float chosen,
                                    FeatureRow& out) {
  std::vector<float> top;
  top.reserve(r.top_logprobs_size());
  for (float l : r.top_logprobs()) top.push_back(Logprob(l));
  std::sort(top.begin(), top.end(), std::greater<float>());
  if (top.empty()) top.push_back(chosen);  // no top-k sent: the chosen token alone
  // HALT's layout: the chosen token first, then the others (the chosen one
  // removed from the top-k where it appears, else the top-(k-1)).
  std::vector<float> alts;
  auto match =
      std::find_if(top.begin(), top.end(), [&](float l) { return std::fabs(l - chosen) <= 1e-5f; });
  for (auto it = top.begin(); it != top.end(); ++it) {
    if (it != match) alts.push_back(*it);
  }
  if (match == top.end() && !alts.empty()) alts.pop_back();
  std::vector<float> halt = {chosen};
  halt.insert(halt.end(), alts.begin(), alts.end());

  out[kEntropy] = entropy;
  out[kChosenLogprob] = chosen;
  out[kLogitMargin] = FiniteOr(r.logit_margin(), 0.0f);
  out[kTop1Prob] = std::exp(top[0]);
  double top5 = 0;
  for (size_t i = 0; i < std::min<size_t>(5, top.size()); ++i) top5 += std::exp(top[i]);
  out[kTop5Prob] = static_cast<float>(std::min(1.0, top5));
  out[kTopkEntropy] = static_cast<float>(EntropyOfLogWeights(halt));
  out[kTopkHAlts] = static_cast<float>(EntropyOfLogWeights(alts));
  double sum = 0;
  for (float l : halt) sum += l;
  out[kTopkAvgLogprob] = static_cast<float>(sum / halt.size());
  out[kRankProxy] = 1.0f + static_cast<float>(std::count_if(alts.begin(), alts.end(),
                                                            [&](float l) { return l > chosen; }));
  const float dec =
      alts.empty() ? 0.0f : static_cast<float>(BinaryEntropy(Sigmoid(chosen - alts[0])));
  out[kDecEntropy] = dec;
  out[kDeltaDecEntropy] = tokens_ == 0 ? 0.0f : dec - prev_dec_entropy_;
  prev_dec_entropy_ = dec;
  out[kDeltaEntropy] = tokens_ == 0 ? 0.0f : entropy - prev_entropy_;
}

void SessionFeatures::RollingFeatures(FeatureRow& out) const {
  constexpr std::array<int, 3> kWindows = {8, 16, 32};
  for (int i = 0; i < 3; ++i) {
    const int w = kWindows[i];
    out[kEntropyMeanW8 + 3 * i] = static_cast<float>(entropy_.Mean(w));
    out[kEntropyMaxW8 + 3 * i] = static_cast<float>(entropy_.Max(w));
    out[kEntropyStdW8 + 3 * i] = static_cast<float>(entropy_.Std(w));
    out[kLogprobMeanW8 + 3 * i] = static_cast<float>(logprob_.Mean(w));
    out[kLogprobMinW8 + 3 * i] = static_cast<float>(logprob_.Min(w));
    out[kLogprobStdW8 + 3 * i] = static_cast<float>(logprob_.Std(w));
  }
  // ERGO's signal (guard.md 1.5) on adjacent, non-overlapping token windows.
  for (auto [w, f] : {std::pair{8, kErgoDhW8}, std::pair{32, kErgoDhW32}}) {
    if (entropy_.count() < 2 * w) {
      out[f] = 0.0f;
      continue;
    }
    double recent = 0, before = 0;
    for (int i = 0; i < w; ++i) {
      recent += entropy_.Back(i);
      before += entropy_.Back(w + i);
    }
    out[f] = static_cast<float>((recent - before) / w);
  }
}

void SessionFeatures::RepetitionFeatures(int32_t token_id, FeatureRow& out) {
  const int32_t rep4 = ngram4_.Add(token_ids_);
  const int32_t rep8 = ngram8_.Add(token_ids_);
  const int32_t rep20 = ngram20_.Add(token_ids_);
  rep4_seen_.Push(rep4 > 0 ? 1.0 : 0.0);
  rep20_.Push(rep20);
  token_run_ = token_id == prev_token_ ? token_run_ + 1 : 1;
  prev_token_ = token_id;
  out[kRepCount4] = static_cast<float>(rep4);
  out[kRepCount8] = static_cast<float>(rep8);
  out[kRepCount20] = static_cast<float>(rep20);
  out[kRep4ShareW32] = static_cast<float>(rep4_seen_.Mean(32));
  out[kRep20SumW8] = static_cast<float>(rep20_.Sum(8));
  out[kTokenRun] = static_cast<float>(token_run_);
}

void SessionFeatures::CacheFeatures(const v1::StepReport& r, FeatureRow& out) {
  const v1::KvHandle& kv = r.kv();
  out[kRetainedFrac] =
      kv.total_tokens() > 0 ? static_cast<float>(kv.retained_tokens()) / kv.total_tokens() : 1.0f;
  out[kKvRatio] = static_cast<float>(kv.ratio());
  out[kRequestedRatio] = static_cast<float>(info_.requested_ratio);
  out[kKvBytes] = static_cast<float>(kv.bytes());
  const int mode = static_cast<int>(kv.mode());
  if (mode != last_mode_) {
    last_mode_ = mode;
    mode_since_ = tokens_;
  }
  out[kMode] = static_cast<float>(mode);
  out[kStepsSinceModeChange] = static_cast<float>(tokens_ - mode_since_);
  out[kEvictedCount] = static_cast<float>(r.evicted_positions_size());
}

}  // namespace kvguard::guard
