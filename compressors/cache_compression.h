// File: compressors/cache_compression.h
//
// Drives a compressor over one sequence's cache: decides when to compress
// (after the prefill; during decoding whenever a layer exceeds its budget, or
// every N steps), builds the context, and applies the plans. The target
// ratio can change between steps (the guard raises and lowers it).
//
//   KVG_ASSIGN_OR_RETURN(auto cc, CacheCompression::Create({.compressor = "snapkv", .ratio =
//   0.5})); cache options .needs = cc->Needs();
//   ... forward(prompt) ...; KVG_RETURN_IF_ERROR(cc->AfterForward(cache, config, rope,
//   /*prefill=*/true));
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressors/compression_spec.h"
#include "compressors/compressor.h"

namespace kvguard::compress {

struct CompressionStats {
  int64_t runs = 0;                // compressor invocations (layer plans)
  int64_t evicted_slots = 0;       // slots removed, summed over layers and heads
  int64_t approximated_slots = 0;  // slots whose value was dropped for a prediction (VECTOR)
  int64_t deferred = 0;            // layer plans put off because the method could not run yet
};

class CacheCompression {
 public:
  static absl::StatusOr<std::unique_ptr<CacheCompression>> Create(const CompressionSpec& spec);

  [[nodiscard]] engine::AttentionNeeds Needs() const { return compressor_->Needs(); }
  // Sets what the compressor needs on a cache about to be created.
  void ConfigureCache(engine::KvCacheOptions& options) const {
    options.needs = compressor_->Needs();
    compressor_->ConfigureStorage(options);
  }
  [[nodiscard]] double ratio() const { return ratio_; }
  // Whether the next AfterForward() may evict (the ratio is set and, with
  // compress_every, this decode step is one of the scheduled ones).
  [[nodiscard]] bool Due(bool prefill) const {
    if (ratio_ <= 0.0) return false;
    return prefill || every_ <= 0 || (decode_steps_ + 1) % every_ == 0;
  }
  // Takes effect at the next AfterForward(). InvalidArgument outside [0, 1).
  absl::Status set_ratio(double ratio);
  [[nodiscard]] Compressor& compressor() { return *compressor_; }
  [[nodiscard]] const CompressionStats& stats() const { return stats_; }

  // Call after each forward pass of the sequence. `protected_positions` are
  // never evicted. Plans with an `approximate` route move those slots to the
  // cache's keys-only pool before the kept slots are retained. A method that cannot run yet
  // (FailedPrecondition: e.g. a prompt shorter than its window) is deferred to a later step unless
  // `strict`, so a short prompt never fails a generation.
  absl::Status AfterForward(engine::SequenceKvCache& cache, const engine::ModelConfig& config,
                            const RopeFn& rope, bool prefill,
                            const std::set<int32_t>& protected_positions = {}, bool strict = false);

 private:
  CacheCompression(std::unique_ptr<Compressor> c, const CompressionSpec& spec)
      : compressor_(std::move(c)), ratio_(spec.ratio), every_(spec.compress_every) {}

  absl::Status Apply(engine::SequenceKvCache& cache, int64_t layer, const LayerPlan& plan);

  std::unique_ptr<Compressor> compressor_;
  double ratio_;
  int64_t every_;
  int64_t decode_steps_ = 0;
  CompressionStats stats_;
};

absl::Status ValidateRatio(double ratio);

// Entries per layer that a sequence of `total` positions keeps at its end
// under `spec` at `ratio`: the budget floor(total * (1 - ratio)), never below
// the observation window the compressor always keeps, plus the tokens that
// accumulate between compressions. What the server's KV pool reserves for a
// request (an upper bound for packed KIVI layers).
absl::StatusOr<int64_t> ProjectedRetained(const CompressionSpec& spec, double ratio, int64_t total);

}  // namespace kvguard::compress
