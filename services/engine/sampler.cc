#include "services/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace kvguard::engine {
namespace {

struct Distribution {
  float max_logit;
  double log_sum_exp;  // log sum exp(logit - max)
};

Distribution Normalizer(const std::vector<float>& logits) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float l : logits) max_logit = std::max(max_logit, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - max_logit));
  return {max_logit, std::log(sum)};
}

}  // namespace

void Sampler::BanRepeatedNgrams(std::span<const int32_t> generated, std::vector<float>& l) const {
  const size_t n = static_cast<size_t>(params_.no_repeat_ngram);
  if (n < 2 || generated.size() < n) return;
  // The last n - 1 tokens, followed by any token that followed them before, would repeat an n-gram.
  const auto tail = generated.last(n - 1);
  for (size_t i = 0; i + n <= generated.size(); ++i) {
    const int32_t next = generated[i + n - 1];
    if (next >= 0 && next < static_cast<int32_t>(l.size()) &&
        std::equal(tail.begin(), tail.end(), generated.begin() + static_cast<ptrdiff_t>(i))) {
      l[next] = -std::numeric_limits<float>::infinity();
    }
  }
}

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature)) {
    return absl::InvalidArgumentError("temperature must be a finite number >= 0");
  }
  if (p.top_k < 0) return absl::InvalidArgumentError("top_k must be >= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) return absl::InvalidArgumentError("top_p must be in (0, 1]");
  if (!(p.repetition_penalty > 0) || !std::isfinite(p.repetition_penalty)) {
    return absl::InvalidArgumentError("repetition_penalty must be a finite number > 0");
  }
  if (p.no_repeat_ngram < 0 || p.no_repeat_ngram == 1 || p.no_repeat_ngram > 1024) {
    return absl::InvalidArgumentError("no_repeat_ngram must be 0 (off) or in [2, 1024]");
  }
  if (p.logprobs < 0 || p.logprobs > 100) {
    return absl::InvalidArgumentError("logprobs must be in [0, 100]");
  }
  return absl::OkStatus();
}

SampledToken Sampler::Sample(std::span<const float> logits, std::span<const int32_t> history,
                             size_t generated_from) {
  scratch_.assign(logits.begin(), logits.end());
  std::vector<float>& l = scratch_;
  const int32_t vocab = static_cast<int32_t>(l.size());
  if (params_.repetition_penalty != 1.0) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    const float p = static_cast<float>(params_.repetition_penalty);
    for (int32_t id : seen) {
      if (id >= 0 && id < vocab) l[id] = l[id] > 0 ? l[id] / p : l[id] * p;
    }
  }
  BanRepeatedNgrams(history.subspan(std::min(generated_from, history.size())), l);
  const Distribution dist = Normalizer(l);
  auto logprob = [&](int32_t id) {
    return static_cast<float>(static_cast<double>(l[id] - dist.max_logit) - dist.log_sum_exp);
  };
  SampledToken out;
  // Entropy and top-2 margin in one pass.
  double entropy = 0;
  float first = -std::numeric_limits<float>::infinity(), second = first;
  int32_t best = 0;
  for (int32_t i = 0; i < vocab; ++i) {
    const double lp = logprob(i);
    if (std::isfinite(lp)) entropy -= std::exp(lp) * lp;
    if (l[i] > first) {
      second = first;
      first = l[i];
      best = i;
    } else if (l[i] > second) {
      second = l[i];
    }
  }
  out.entropy = static_cast<float>(entropy);
  out.margin = vocab > 1 ? first - second : 0.0f;
  out.id = params_.temperature == 0.0 ? best : Draw(l);
  out.logprob = logprob(out.id);
  if (params_.logprobs > 0) {
    // The k best (ties to the lower id) in one pass: a heap whose front is
    // the worst kept, which most entries of a peaked row fail against.
    const int32_t k = std::min(params_.logprobs, vocab);
    auto better = [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
    top_.clear();
    for (int32_t i = 0; i < k; ++i) top_.push_back(i);
    std::make_heap(top_.begin(), top_.end(), better);
    for (int32_t i = k; i < vocab; ++i) {
      if (!(l[i] > l[top_.front()])) continue;  // a later id never wins a tie
      std::pop_heap(top_.begin(), top_.end(), better);
      top_.back() = i;
      std::push_heap(top_.begin(), top_.end(), better);
    }
    std::sort_heap(top_.begin(), top_.end(), better);
    out.top_logprobs.reserve(static_cast<size_t>(k));
    for (int32_t id : top_) out.top_logprobs.push_back({id, logprob(id)});
  }
  return out;
}

// Temperature, then top-k, then top-p (HF's order), then one draw.
int32_t Sampler::Draw(const std::vector<float>& logits) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int32_t keep = vocab;
  if (params_.top_k > 0) keep = std::min(keep, params_.top_k);
  const double inv_t = 1.0 / params_.temperature;
  const double top = static_cast<double>(logits[order[0]]) * inv_t;
  std::vector<double> probs(keep);
  double sum = 0;
  for (int32_t i = 0; i < keep; ++i) {
    probs[i] = std::exp(static_cast<double>(logits[order[i]]) * inv_t - top);
    sum += probs[i];
  }
  if (params_.top_p < 1.0) {
    // Smallest prefix whose mass reaches top_p (always at least one token).
    double mass = 0;
    int32_t cut = 0;
    while (cut < keep) {
      mass += probs[cut] / sum;
      ++cut;
      if (mass >= params_.top_p) break;
    }
    keep = cut;
    probs.resize(keep);
    sum = std::accumulate(probs.begin(), probs.end(), 0.0);
  }
  // Inverse-CDF draw from a 53-bit uniform: identical across platforms for a given seed.
  const double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0) * sum;
  double acc = 0;
  for (int32_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace kvguard::engine
