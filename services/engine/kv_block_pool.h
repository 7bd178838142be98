// File: services/engine/kv_block_pool.h
//
// The server's KV memory budget: a fixed number of equal blocks, each holding
// the keys and values of `block_tokens` tokens of one layer. Every layer
// store of every sequence takes its memory from one pool, so a block an
// eviction frees can serve another sequence at the next step, and what the
// scheduler admits is decided in blocks, not in sequences (vLLM's block
// manager, arXiv 2309.06180, with compression moving the budget).
//
// Torch-free bookkeeping; the tensors the blocks index live in a KvArena
// (kv_layer_store.h). One thread (the scheduler's loop) allocates and frees;
// the counters are safe to read from others.
//
//   auto pool = KvBlockPool::Create({.total_blocks = 1024, .block_tokens = 16, .block_bytes =
//   4096}); auto ids = (*pool)->Allocate(3);   // ResourceExhausted when fewer are free
//   (*pool)->Free(*ids);
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace kvguard::engine {

struct KvBlockPoolOptions {
  int64_t total_blocks = 0;
  int64_t block_tokens = 16;  // tokens of one layer per block
  int64_t block_bytes = 0;    // keys + values of block_tokens tokens of one layer
};

class KvBlockPool {
 public:
  static absl::StatusOr<std::shared_ptr<KvBlockPool>> Create(const KvBlockPoolOptions& options);

  // Takes n blocks, preferring the ones right after `after` so a store's
  // blocks stay contiguous (attention then reads a view, not a copy).
  // ResourceExhausted, and nothing taken, when fewer than n are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n, int32_t after = -1);
  void Free(std::span<const int32_t> ids);

  [[nodiscard]] int64_t BlocksForTokens(int64_t tokens) const {
    return (tokens + options_.block_tokens - 1) / options_.block_tokens;
  }
  [[nodiscard]] int64_t free_blocks() const { return free_count_.load(); }
  [[nodiscard]] int64_t used_blocks() const { return options_.total_blocks - free_blocks(); }
  [[nodiscard]] int64_t total_blocks() const { return options_.total_blocks; }
  [[nodiscard]] int64_t block_tokens() const { return options_.block_tokens; }
  [[nodiscard]] int64_t block_bytes() const { return options_.block_bytes; }
  [[nodiscard]] int64_t total_bytes() const { return options_.total_blocks * options_.block_bytes; }

 private:
  explicit KvBlockPool(const KvBlockPoolOptions& options);

  KvBlockPoolOptions options_;
  mutable std::mutex mu_;
  std::set<int32_t> free_;  // ordered: lowest-first reuse keeps the arena's touched pages few
  std::atomic<int64_t> free_count_{0};
};

}  // namespace kvguard::engine
