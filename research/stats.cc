// File: research/stats.cc
#include "research/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "research/rng.h"

namespace kvguard::research {
namespace {

// Nearest-rank style quantile of a sorted sample.
double SortedQuantile(const std::vector<double>& sorted, double q, bool round_up) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto idx = static_cast<size_t>(round_up ? std::ceil(pos) : std::floor(pos));
  return sorted[std::min(idx, sorted.size() - 1)];
}

}  // namespace

RateCI WilsonInterval(int64_t k, int64_t n, double z) {
  if (n <= 0) return {.rate = 0, .lo = 0, .hi = 1};
  const double nn = static_cast<double>(n);
  const double p = static_cast<double>(k) / nn;
  const double z2 = z * z;
  const double denom = 1 + z2 / nn;
  const double center = (p + z2 / (2 * nn)) / denom;
  const double half = z * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / denom;
  return {.rate = p, .lo = std::max(0.0, center - half), .hi = std::min(1.0, center + half)};
}

RateCI NewcombeDifference(int64_t k1, int64_t n1, int64_t k2, int64_t n2, double z) {
  const RateCI a = WilsonInterval(k1, n1, z);
  const RateCI b = WilsonInterval(k2, n2, z);
  const double d = a.rate - b.rate;
  return {.rate = d,
          .lo = d - std::hypot(a.rate - a.lo, b.hi - b.rate),
          .hi = d + std::hypot(a.hi - a.rate, b.rate - b.lo)};
}

RateCI BootstrapDifference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                           int resamples, double confidence, uint64_t seed) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  if (a.empty() || a.size() != b.size() || resamples < 1) return {kNaN, kNaN, kNaN};
  const auto n = static_cast<int64_t>(a.size());
  auto mean_diff = [&](auto index_of) {
    int64_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = index_of(i);
      sum += static_cast<int64_t>(a[j] != 0) - static_cast<int64_t>(b[j] != 0);
    }
    return static_cast<double>(sum) / static_cast<double>(n);
  };
  SplitMix64 rng(HashCombine(0x626F6F74ULL, seed));
  std::vector<double> diffs(static_cast<size_t>(resamples));
  for (double& d : diffs) d = mean_diff([&](int64_t) { return rng.Index(n); });
  std::sort(diffs.begin(), diffs.end());
  const double tail = (1 - confidence) / 2;
  return {.rate = mean_diff([](int64_t i) { return i; }),
          .lo = SortedQuantile(diffs, tail, /*round_up=*/false),
          .hi = SortedQuantile(diffs, 1 - tail, /*round_up=*/true)};
}

}  // namespace kvguard::research
