#include "research/pipeline/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kvguard::research {

double Auroc(const std::vector<float>& s, const std::vector<uint8_t>& y) {
  std::vector<size_t> order(s.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s[a] < s[b]; });
  double rank_sum = 0, pos = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && s[order[j]] == s[order[i]]) ++j;
    const double avg_rank = 0.5 * (i + 1 + j);  // ranks i+1..j averaged
    for (size_t k = i; k < j; ++k) {
      if (y[order[k]]) rank_sum += avg_rank, ++pos;
    }
    i = j;
  }
  const double neg = static_cast<double>(s.size()) - pos;
  if (pos == 0 || neg == 0) return NAN;
  return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

float ThresholdAtFpr(const std::vector<float>& s, const std::vector<uint8_t>& y, double fpr) {
  std::vector<float> neg;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!y[i]) neg.push_back(s[i]);
  }
  if (neg.empty()) return 0.5f;
  std::sort(neg.begin(), neg.end(), std::greater<float>());
  // Alarm when score > threshold: allow floor(fpr * n) negatives above it.
  const size_t allowed = static_cast<size_t>(std::floor(fpr * neg.size()));
  return allowed >= neg.size() ? neg.back() : neg[allowed];
}

double RecallAt(const std::vector<float>& s, const std::vector<uint8_t>& y, float threshold) {
  double tp = 0, pos = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (y[i]) {
      ++pos;
      tp += s[i] > threshold;
    }
  }
  return pos ? tp / pos : NAN;
}

std::vector<std::pair<double, double>> RocCurve(const std::vector<float>& s, const std::vector<uint8_t>& y,
                                                int points) {
  std::vector<std::pair<double, double>> out;
  std::vector<float> sorted = s;
  std::sort(sorted.begin(), sorted.end());
  double pos = 0, neg = 0;
  for (uint8_t v : y) (v ? pos : neg) += 1;
  if (pos == 0 || neg == 0 || sorted.empty()) return out;
  for (int k = 0; k <= points; ++k) {
    const float t = k == points ? sorted.back() : sorted[static_cast<size_t>(double(k) / points * (sorted.size() - 1))];
    double tp = 0, fp = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] >= t) (y[i] ? tp : fp) += 1;
    }
    out.emplace_back(fp / neg, tp / pos);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace kvguard::research
