// VECTOR: three-way routing of KV entries -- retain, approximate, evict
// (seed note 003, "A Simple Plug-in for Improving Eviction-Based KV Cache
// Compression"; the note has the abstract and review, no equations).
//
// From the paper: a plug-in over an eviction scorer; the base scorer's
// importance ranks the tokens; besides retention and eviction, a middle route
// keeps the key (so attention still routes to the token) and replaces the
// value by an estimate from an offline-calibrated regression.
//
// Our choices, where the note is silent:
//  - The estimate is a per-layer, per-kv-head linear ridge regression on
//    post-RoPE keys, v ~= [k, 1] W, fitted by `kvguard calibrate-vector`
//    (compressors/vector_calibration.h). Attention reads the prediction
//    (SequenceKvCache::Approximate).
//  - Routing uses the base score only: best slots are retained, the next ones
//    approximated, the rest evicted. The paper also weighs a
//    reconstructability signal (how well a token's value is predicted); we do
//    not, so a badly predicted value can still take the middle route.
//  - Base scores: `score` = knorm | keydiff | observed_attention, the same
//    formulas as those built-ins (builtin/key_scores.h).
//  - Counts (the paper's "Eq. 1" is not in the note). An approximated entry
//    keeps its key and frees its value: it holds half an entry. With the
//    budget b = int(seen * (1 - ratio)) entries (Compressor::Budget), R
//    retained slots and A slots approximated earlier, a plan removes
//    H = 2R + A - 2b half-entries, a of them by approximation (one half each)
//    and e by eviction (two halves each): a + 2e = H, i.e. e + a / 2 = the
//    entries the ratio asks to remove. approx_share is the share of the
//    kept budget held by approximated entries: the pool aims at
//    2 * approx_share * b slots (a = that target minus the pool so far), so
//    every ratio in [0, 1) has a valid split (tying the share to the removed
//    bytes instead leaves no exactly kept slots above ratio 2/3). Ties in
//    parity go to fewer approximations. approx_share 0 is exactly the base
//    scorer's eviction. Protected positions (and at least one slot) stay
//    retained; when that leaves too few slots for the share, a shrinks, and
//    when even evicting every other slot cannot reach H, all those are
//    evicted (TopKPlan likewise grows the kept set past the budget).
//  - Approximated entries are final: the cache has no route back, so later
//    compressions only route retained slots and count the pool against b.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressors/builtin/builtins.h"
#include "compressors/builtin/key_scores.h"
#include "compressors/vector_calibration.h"

namespace kvguard::compress {
namespace {

enum class BaseScore { kKnorm, kKeyDiff, kObservedAttention };

struct Routes {
  int64_t retain = 0;
  int64_t approximate = 0;
  int64_t evict = 0;
};

// What the counts rule (file comment) looks at, for one layer.
struct LayerState {
  int64_t retained = 0;      // R
  int64_t approximated = 0;  // A, from earlier plans
  int64_t budget = 0;        // b, entries
  int64_t seen = 0;          // positions the sequence has had
  int64_t min_retain = 1;    // slots that must stay retained
};

Routes SplitRemoval(const LayerState& s, double share) {
  const int64_t half = 2 * s.retained + s.approximated - 2 * s.budget;
  const int64_t movable = s.retained - std::min(s.min_retain, s.retained);
  if (half <= 0 || movable == 0) return {.retain = s.retained};
  // a + e <= movable with a + 2e = half gives a <= 2 * movable - half.
  const int64_t most = std::min(half, 2 * movable - half);
  if (most < 0) return {.retain = s.retained - movable, .evict = movable};
  // The approximated pool aims at `share` of the kept budget (half an entry each).
  const double target = 2.0 * share * static_cast<double>(s.budget) - static_cast<double>(s.approximated);
  int64_t a = std::clamp<int64_t>(std::llround(target), 0, most);
  if ((half - a) % 2 != 0) {
    // `most` has the parity a needs, so a + 1 <= most; ties go to fewer approximations.
    a += (a >= 1 && target - static_cast<double>(a - 1) <= static_cast<double>(a + 1) - target) ? -1 : 1;
  }
  const int64_t e = (half - a) / 2;
  return {.retain = s.retained - a - e, .approximate = a, .evict = e};
}

class VectorCompressor final : public Compressor {
 public:
  VectorCompressor(std::string path, at::Tensor regression, BaseScore score, double share)
      : path_(std::move(path)), regression_(std::move(regression)), score_(score), share_(share) {}

  const std::string& name() const override { return name_; }
  engine::AttentionNeeds Needs() const override {
    return {.attention_sums = score_ == BaseScore::kObservedAttention};
  }
  // Retained slots that fit beside the approximated pool (half an entry each).
  int64_t Budget(const CompressContext& ctx, int64_t layer) const override {
    const int64_t fit = EntryBudget(ctx) - (ctx.cache->ApproximatedSlots(layer) + 1) / 2;
    return std::clamp<int64_t>(fit, 1, ctx.cache->RetainedSlots(layer));
  }
  absl::StatusOr<LayerPlan> Plan(const CompressContext& ctx, int64_t layer) override;

 private:
  absl::StatusOr<at::Tensor> Scores(const CompressContext& ctx, int64_t layer) const;

  std::string name_ = "vector";
  std::string path_;
  at::Tensor regression_;  // [layers, kv_heads, head_dim + 1, head_dim] float32
  BaseScore score_;
  double share_;
  bool checked_ = false;  // regression_ matches ctx.config
};

absl::StatusOr<at::Tensor> VectorCompressor::Scores(const CompressContext& ctx, int64_t layer) const {
  switch (score_) {
    case BaseScore::kKnorm: return KnormScore(ctx.cache->Keys(layer));
    case BaseScore::kKeyDiff: return KeyDiffScore(ctx.cache->Keys(layer));
    case BaseScore::kObservedAttention: break;
  }
  auto scores = ObservedAttentionScore(*ctx.cache, layer);
  if (!scores.ok()) return absl::FailedPreconditionError(absl::StrCat("vector: ", scores.status().message()));
  return scores;
}

absl::StatusOr<LayerPlan> VectorCompressor::Plan(const CompressContext& ctx, int64_t layer) {
  if (!checked_) {
    // InvalidArgument, not FailedPrecondition: the driver would defer the latter forever.
    if (auto s = CheckVectorCalibration(regression_, *ctx.config, path_); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("compressor 'vector': ", s.message()));
    }
    checked_ = true;
  }
  const auto& positions = ctx.cache->Positions(layer);
  const int64_t total = ctx.cache->RetainedSlots(layer);
  const int64_t min_retain = std::max<int64_t>(1, MostProtected(positions, ctx.protected_positions));
  const Routes routes = SplitRemoval({.retained = total,
                                      .approximated = ctx.cache->ApproximatedSlots(layer),
                                      .budget = EntryBudget(ctx),
                                      .seen = ctx.cache->num_positions(),
                                      .min_retain = min_retain},
                                     share_);
  if (routes.retain >= total) return LayerPlan{};
  KVG_ASSIGN_OR_RETURN(at::Tensor scores, Scores(ctx, layer));
  scores = scores.to(at::kCPU, at::kFloat).contiguous();
  const int64_t heads = ctx.config->num_kv_heads;
  if (scores.dim() != 2 || scores.size(0) != heads || scores.size(1) != total) {
    return absl::InternalError("vector: base scores of the wrong shape");
  }
  LayerPlan plan{.keep_all = false, .keep = std::vector<std::vector<int64_t>>(heads)};
  if (routes.approximate > 0) {
    plan.approximate.resize(heads);
    plan.regression = regression_[layer];
  }
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<int64_t> order =
        RankSlots(scores.data_ptr<float>() + h * total, total, positions[h], ctx.protected_positions);
    auto retain_end = order.begin() + routes.retain;
    plan.keep[h].assign(order.begin(), retain_end);
    std::sort(plan.keep[h].begin(), plan.keep[h].end());
    if (routes.approximate == 0) continue;
    plan.approximate[h].assign(retain_end, retain_end + routes.approximate);
    std::sort(plan.approximate[h].begin(), plan.approximate[h].end());
  }
  return plan;
}

absl::StatusOr<BaseScore> ParseBaseScore(const std::string& name) {
  if (name == "knorm") return BaseScore::kKnorm;
  if (name == "keydiff") return BaseScore::kKeyDiff;
  if (name == "observed_attention") return BaseScore::kObservedAttention;
  return absl::InvalidArgumentError(absl::StrCat(
      "compressor 'vector': option 'score' must be knorm, keydiff or observed_attention, got '", name, "'"));
}

absl::StatusOr<std::unique_ptr<Compressor>> MakeVector(const OptionValues& v) {
  const std::string& path = v.String("calibration");
  if (path.empty()) {
    return absl::InvalidArgumentError(
        "compressor 'vector': option 'calibration' is required (a file from `kvguard calibrate-vector`)");
  }
  KVG_ASSIGN_OR_RETURN(BaseScore score, ParseBaseScore(v.String("score")));
  auto regression = ReadVectorCalibration(path);
  if (!regression.ok()) {
    return absl::Status(regression.status().code(),
                        absl::StrCat("compressor 'vector': calibration file ", regression.status().message()));
  }
  return std::make_unique<VectorCompressor>(path, std::move(*regression), score, v.Double("approx_share"));
}

}  // namespace

CompressorInfo VectorInfo() {
  return {.name = "vector",
          .description = "VECTOR: retain / approximate (value regressed from the key) / evict (seed note 003)",
          .options = {StringOption("calibration", "",
                                   "regression file from `kvguard calibrate-vector` (required)"),
                      StringOption("score", "knorm", "base importance: knorm, keydiff or observed_attention"),
                      DoubleOption("approx_share", 0.5, 0.0, 0.95,
                                   "share of the kept budget held by approximated entries (0 = plain eviction)")},
          .factory = MakeVector};
}

}  // namespace kvguard::compress
