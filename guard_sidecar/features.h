// File: guard_sidecar/features.h
//
// Per-token features of the hazard model, computed from the server's
// StepReports (kvguard/v1/guard.proto) one token at a time.
//
//   SessionFeatures f(SessionInfo{.requested_ratio = 0.8, .max_new_tokens = 256});
//   FeatureRow row;
//   for (const v1::StepReport& r : reports) f.Update(r, row);   // row: every feature
//   FeatureSchema schema = FeatureSchema::ForAblation("no_repetition").value();
//   std::vector<float> model_row(schema.size());
//   schema.Project(row, model_row.data());                    // the model's columns
//
// Every feature has a stable name (the table below is the documentation; the
// names are stored in model files and checked on load, so never rename one
// without retraining). A FeatureSchema selects a subset of columns, by name or
// by group, for ablations: "no_ratio" (without the cache/compression-ratio
// group), "no_repetition", "logit_only".
//
// Determinism and cost: Update is a pure function of the report sequence; per
// token it does bounded work (scans of at most 64 buffered values, three hash
// map probes), independent of the sequence length. Non-finite inputs are
// replaced (log-probs floored at -100, NaN entropy -> 0) so no feature is NaN.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "kvguard/v1/guard.pb.h"

namespace kvguard::guard {

// Groups, for ablations. kLogit and kRolling are the "logit only" set.
enum class FeatureGroup { kLogit, kRolling, kRepetition, kThinking, kPosition, kCache };

// clang-format off
// X(enum, name, group, description). Windows count the current token.
// "top-k" below means the report's top_logprobs (descending, up to 20).
#define KVG_GUARD_FEATURES(X)                                                                   \
  /* ---- this token's logit statistics ---- */                                                 \
  X(kEntropy, "entropy", kLogit, "entropy of the full next-token distribution (nats)")          \
  X(kChosenLogprob, "chosen_logprob", kLogit, "log-probability of the sampled token")           \
  X(kLogitMargin, "logit_margin", kLogit, "top-1 minus top-2 logit")                            \
  X(kTop1Prob, "top1_prob", kLogit, "probability of the most likely token")                     \
  X(kTop5Prob, "top5_prob", kLogit, "summed probability of the 5 most likely tokens")           \
  X(kTopkEntropy, "topk_entropy", kLogit, "HALT H_overall: entropy of top-k renormalised")      \
  X(kTopkHAlts, "topk_h_alts", kLogit, "HALT H_alts: entropy of the non-chosen top-k")          \
  X(kTopkAvgLogprob, "topk_avg_logprob", kLogit, "HALT AvgLogP: mean of the top-k log-probs")   \
  X(kRankProxy, "rank_proxy", kLogit, "HALT RankProxy: 1 + #top-k entries above the chosen")    \
  X(kDecEntropy, "dec_entropy", kLogit, "HALT H_dec: binary entropy chosen vs runner-up")       \
  X(kDeltaDecEntropy, "delta_dec_entropy", kLogit, "HALT dH_dec: change of dec_entropy")        \
  X(kDeltaEntropy, "delta_entropy", kLogit, "change of entropy since the previous token")       \
  /* ---- rolling statistics over the last 8/16/32 tokens ---- */                              \
  X(kEntropyMeanW8, "entropy_mean_w8", kRolling, "mean entropy, last 8 tokens")                 \
  X(kEntropyMaxW8, "entropy_max_w8", kRolling, "max entropy, last 8 tokens")                    \
  X(kEntropyStdW8, "entropy_std_w8", kRolling, "population std of entropy, last 8")             \
  X(kEntropyMeanW16, "entropy_mean_w16", kRolling, "mean entropy, last 16 tokens")              \
  X(kEntropyMaxW16, "entropy_max_w16", kRolling, "max entropy, last 16 tokens")                 \
  X(kEntropyStdW16, "entropy_std_w16", kRolling, "population std of entropy, last 16")          \
  X(kEntropyMeanW32, "entropy_mean_w32", kRolling, "mean entropy, last 32 tokens")              \
  X(kEntropyMaxW32, "entropy_max_w32", kRolling, "max entropy, last 32 tokens")                 \
  X(kEntropyStdW32, "entropy_std_w32", kRolling, "population std of entropy, last 32")          \
  X(kLogprobMeanW8, "chosen_logprob_mean_w8", kRolling, "mean chosen log-prob, last 8")         \
  X(kLogprobMinW8, "chosen_logprob_min_w8", kRolling, "least likely chosen token, last 8")      \
  X(kLogprobStdW8, "chosen_logprob_std_w8", kRolling, "std of chosen log-prob, last 8")         \
  X(kLogprobMeanW16, "chosen_logprob_mean_w16", kRolling, "mean chosen log-prob, last 16")      \
  X(kLogprobMinW16, "chosen_logprob_min_w16", kRolling, "least likely chosen token, last 16")   \
  X(kLogprobStdW16, "chosen_logprob_std_w16", kRolling, "std of chosen log-prob, last 16")      \
  X(kLogprobMeanW32, "chosen_logprob_mean_w32", kRolling, "mean chosen log-prob, last 32")      \
  X(kLogprobMinW32, "chosen_logprob_min_w32", kRolling, "least likely chosen token, last 32")   \
  X(kLogprobStdW32, "chosen_logprob_std_w32", kRolling, "std of chosen log-prob, last 32")      \
  /* ERGO-style (guard.md 1.5): mean entropy of the last W tokens minus that of the W   */      \
  /* before them (adjacent, non-overlapping; signed); 0 until 2W tokens were seen.      */      \
  X(kErgoDhW8, "ergo_dh_w8", kRolling, "ERGO dH: mean H[t-7..t] - mean H[t-15..t-8]")           \
  X(kErgoDhW32, "ergo_dh_w32", kRolling, "ERGO dH: mean H[t-31..t] - mean H[t-63..t-32]")       \
  /* ---- repetition (token ids) ---- */                                                        \
  X(kRepCount4, "rep_count_4", kRepetition, "earlier occurrences of the 4-gram ending here")    \
  X(kRepCount8, "rep_count_8", kRepetition, "earlier occurrences of the 8-gram ending here")    \
  X(kRepCount20, "rep_count_20", kRepetition, "earlier occurrences of the 20-gram ending here")  \
  X(kRep4ShareW32, "rep4_share_w32", kRepetition, "share of last 32 tokens with rep_count_4>0") \
  X(kRep20SumW8, "rep20_sum_w8", kRepetition, "sum of rep_count_20 over the last 8 tokens")     \
  X(kTokenRun, "token_run_length", kRepetition, "consecutive copies of this token ending here") \
  /* ---- thinking / transition words ---- */                                                   \
  X(kThinking, "is_thinking_token", kThinking, "1 if the token is a transition word (so, ...)") \
  X(kThinkingW32, "thinking_count_w32", kThinking, "transition words among the last 32")        \
  /* ---- position ---- */                                                                      \
  X(kPosition, "position", kPosition, "decode step t (0 = first generated token)")              \
  X(kPositionFrac, "position_frac", kPosition, "t / max_new_tokens (0 if unknown)")             \
  /* ---- KV-cache state and guard mode ---- */                                                 \
  X(kRetainedFrac, "kv_retained_frac", kCache, "retained / total tokens (1 if nothing yet)")    \
  X(kKvRatio, "kv_ratio", kCache, "compression ratio in force (fraction removed)")              \
  X(kRequestedRatio, "requested_ratio", kCache, "ratio the client asked for")                   \
  X(kKvBytes, "kv_bytes", kCache, "bytes held by the sequence's KV cache")                      \
  X(kMode, "mode", kCache, "mode in force as its proto enum value (1 NORMAL .. 4 RECOVERY)")    \
  X(kStepsSinceModeChange, "steps_since_mode_change", kCache, "tokens since kv.mode changed")   \
  X(kEvictedCount, "evicted_count", kCache, "positions evicted at this step")
// clang-format on

enum Feature : int {
#define KVG_GUARD_FEATURE_ENUM(e, name, group, doc) e,
  KVG_GUARD_FEATURES(KVG_GUARD_FEATURE_ENUM)
#undef KVG_GUARD_FEATURE_ENUM
      kNumFeatures
};

struct FeatureInfo {
  std::string_view name;
  FeatureGroup group;
  std::string_view description;
};

inline constexpr std::array<FeatureInfo, kNumFeatures> kFeatureInfo = {{
#define KVG_GUARD_FEATURE_INFO(e, name, group, doc) {name, FeatureGroup::group, doc},
    KVG_GUARD_FEATURES(KVG_GUARD_FEATURE_INFO)
#undef KVG_GUARD_FEATURE_INFO
}};

inline constexpr std::array<std::string_view, kNumFeatures> kFeatureNames = {{
#define KVG_GUARD_FEATURE_NAME(e, name, group, doc) name,
    KVG_GUARD_FEATURES(KVG_GUARD_FEATURE_NAME)
#undef KVG_GUARD_FEATURE_NAME
}};

// One token's full feature vector, indexed by Feature.
using FeatureRow = std::array<float, kNumFeatures>;

std::string_view FeatureGroupName(FeatureGroup group);

// Transition words whose tokens are flagged "thinking" (matched after trimming
// non-letters and lower-casing the token text).
bool IsThinkingWord(std::string_view token_text);

// An ordered subset of the features: the columns one model uses.
class FeatureSchema {
 public:
  // Every feature, in Feature order.
  static FeatureSchema All();
  // Exactly these names, in this order. Unknown or repeated names are errors
  // (a model file naming a feature this guard cannot compute is a mismatch).
  static absl::StatusOr<FeatureSchema> FromNames(const std::vector<std::string>& names);
  // All features except the listed ones; an entry "group:<name>" (e.g.
  // "group:repetition") drops a whole group. Unknown names are errors.
  static absl::StatusOr<FeatureSchema> Excluding(const std::vector<std::string>& names);
  // "full", "no_ratio" (drops group cache), "no_repetition" (drops group
  // repetition) or "logit_only" (keeps groups logit and rolling).
  static absl::StatusOr<FeatureSchema> ForAblation(std::string_view ablation);

  [[nodiscard]] size_t size() const { return columns_.size(); }
  [[nodiscard]] const std::vector<std::string>& names() const { return names_; }
  [[nodiscard]] const std::vector<Feature>& columns() const { return columns_; }
  [[nodiscard]] bool Contains(Feature f) const;

  // Writes this schema's columns of `row` to out[0..size()).
  void Project(const FeatureRow& row, float* out) const;
  // Projects many full rows (n x kNumFeatures, row-major) to n x size().
  [[nodiscard]] std::vector<float> ProjectRows(std::span<const float> full_rows) const;

  friend bool operator==(const FeatureSchema& a, const FeatureSchema& b) {
    return a.columns_ == b.columns_;
  }

 private:
  explicit FeatureSchema(std::vector<Feature> columns);
  std::vector<Feature> columns_;
  std::vector<std::string> names_;
};

// What the server told us at SessionStart (all optional).
struct SessionInfo {
  double requested_ratio = 0.0;
  std::string compressor;
  uint32_t holdback_tokens = 0;  // the server holds the first tokens back (restart allowed)
  uint32_t prompt_tokens = 0;
  uint32_t max_new_tokens = 0;
};

// The running state of one sequence. Not thread-safe; one per session.
class SessionFeatures {
 public:
  explicit SessionFeatures(SessionInfo info = {});

  // Consumes the next report of this session and writes every feature of its
  // token to `out`. Reports must come in step order (gaps are tolerated: the
  // windows just see fewer tokens).
  void Update(const v1::StepReport& report, FeatureRow& out);

  // The KV position the last token will occupy (kv.total_tokens when the
  // report carries it, else prompt_tokens + step): what ALERT protects.
  [[nodiscard]] int32_t last_position() const { return last_position_; }
  [[nodiscard]] bool last_is_thinking() const { return last_thinking_; }
  [[nodiscard]] int64_t tokens_seen() const { return tokens_; }
  [[nodiscard]] const SessionInfo& info() const { return info_; }
  void set_requested_ratio(double ratio) { info_.requested_ratio = ratio; }

 private:
  // A fixed-capacity ring of the most recent values of one signal.
  class Ring {
   public:
    explicit Ring(int capacity) : values_(capacity) {}
    void Push(double v);
    // Statistics over the last min(w, count) values (0 when empty).
    [[nodiscard]] double Sum(int w) const;
    [[nodiscard]] double Mean(int w) const;
    [[nodiscard]] double Max(int w) const;
    [[nodiscard]] double Min(int w) const;
    [[nodiscard]] double Std(int w) const;
    // The value pushed `back` pushes ago (0 = latest); requires back < count.
    [[nodiscard]] double Back(int back) const;
    [[nodiscard]] int64_t count() const { return count_; }

   private:
    [[nodiscard]] int Available(int w) const;
    std::vector<double> values_;
    int64_t count_ = 0;
  };

  // Occurrence counts of the n-grams ending at each token, via a polynomial
  // rolling hash mod 2^61-1 (collisions ~2^-61 per pair: not verified, unlike
  // research::DetectLoop, because a feature may be off by one in 10^15).
  class NgramCounter {
   public:
    explicit NgramCounter(int n);
    // Adds the n-gram ending at the newest token of `tokens`; returns how many
    // times it had occurred before (0 until n tokens were seen).
    int32_t Add(const Ring& tokens);

   private:
    int n_;
    uint64_t power_ = 1;  // base^(n-1) mod p
    uint64_t hash_ = 0;
    absl::flat_hash_map<uint64_t, int32_t> counts_;
  };

  void LogitFeatures(const v1::StepReport& r, float entropy, float chosen, FeatureRow& out);
  void RollingFeatures(FeatureRow& out) const;
  void RepetitionFeatures(int32_t token_id, FeatureRow& out);
  void CacheFeatures(const v1::StepReport& r, FeatureRow& out);

  SessionInfo info_;
  int64_t tokens_ = 0;
  Ring entropy_{64};  // 2 x the largest ERGO window
  Ring logprob_{32};
  Ring token_ids_{32};
  Ring rep4_seen_{32};
  Ring rep20_{8};
  Ring thinking_{32};
  NgramCounter ngram4_{4}, ngram8_{8}, ngram20_{20};
  float prev_entropy_ = 0;
  float prev_dec_entropy_ = 0;
  int32_t prev_token_ = -1;
  int32_t token_run_ = 0;
  int last_mode_ = -1;
  int64_t mode_since_ = 0;
  int32_t last_position_ = -1;
  bool last_thinking_ = false;
};

}  // namespace kvguard::guard
