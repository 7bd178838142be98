// File: research/stats.h
//
// Rates and intervals for the research reports: Wilson intervals for CFR,
// Newcombe's interval for a difference of two independent rates, and a paired
// bootstrap over prompts.
#pragma once

#include <cstdint>
#include <vector>

namespace kvguard::research {

// ---- rates and intervals ----------------------------------------------------

struct RateCI {
  double rate = 0;
  double lo = 0;
  double hi = 0;
};

// Wilson score interval for k successes in n trials (n == 0 gives {0, 0, 1}).
// Preferred over the normal approximation because CFR is often 0 or tiny.
RateCI WilsonInterval(int64_t k, int64_t n, double z = 1.96);

// Newcombe's hybrid score interval (method 10, 1998) for p1 - p2 of two
// independent samples: rate = k1/n1 - k2/n2.
RateCI NewcombeDifference(int64_t k1, int64_t n1, int64_t k2, int64_t n2, double z = 1.96);

// Paired percentile bootstrap of mean(a) - mean(b), where a[i] and b[i] are the
// outcomes (0/1, e.g. catastrophic) of the same prompt under two conditions
// (with and without the guard). Resampling prompts, not tokens (guard.md §7.3).
// Deterministic for a given seed. a and b must have the same non-zero size.
RateCI BootstrapDifference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                           int resamples = 2000, double confidence = 0.95, uint64_t seed = 0);

}  // namespace kvguard::research
