// File: research/rng.h
//
// A tiny, fully specified PRNG for research data. The standard library's
// distributions (std::uniform_int_distribution & co.) are implementation
// defined, so the same seed gives different data under libstdc++ and libc++;
// everything here is plain 64-bit integer arithmetic and reproduces bit for bit
// on every platform.
#pragma once

#include <cstdint>

namespace kvguard::research {

// The SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mix.
constexpr uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Combines a running hash with one more value (order sensitive).
constexpr uint64_t HashCombine(uint64_t h, uint64_t v) { return Mix64(h ^ Mix64(v)); }

// SplitMix64 generator. Passes BigCrush, one word of state, trivially seedable.
class SplitMix64 {
 public:
  explicit constexpr SplitMix64(uint64_t seed) : state_(seed) {}

  constexpr uint64_t Next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  // Uniform integer in [lo, hi] (inclusive), without modulo bias: values below
  // 2^64 mod span are rejected so every residue is equally likely.
  constexpr int64_t Uniform(int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) + 1;
    if (span == 0) return static_cast<int64_t>(Next());  // the full 64-bit range
    const uint64_t threshold = (0 - span) % span;
    uint64_t x = Next();
    while (x < threshold) x = Next();
    return static_cast<int64_t>(static_cast<uint64_t>(lo) + x % span);
  }

  // Uniform index in [0, n); n must be positive.
  constexpr int64_t Index(int64_t n) { return Uniform(0, n - 1); }

 private:
  uint64_t state_;
};

}  // namespace kvguard::research
