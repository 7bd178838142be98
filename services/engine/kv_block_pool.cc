#include "services/engine/kv_block_pool.h"

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvguard::engine {

absl::StatusOr<std::shared_ptr<KvBlockPool>> KvBlockPool::Create(
    const KvBlockPoolOptions& options) {
  if (options.total_blocks <= 0 || options.total_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV pool: total_blocks must be in [1, 2^31), got ", options.total_blocks));
  }
  if (options.block_tokens <= 0 || options.block_bytes <= 0) {
    return absl::InvalidArgumentError("KV pool: block_tokens and block_bytes must be positive");
  }
  return std::shared_ptr<KvBlockPool>(new KvBlockPool(options));
}

KvBlockPool::KvBlockPool(const KvBlockPoolOptions& options) : options_(options) {
  for (int32_t b = 0; b < static_cast<int32_t>(options.total_blocks); ++b)
    free_.insert(free_.end(), b);
  free_count_ = options.total_blocks;
}

absl::StatusOr<std::vector<int32_t>> KvBlockPool::Allocate(int64_t n, int32_t after) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n < 0) return absl::InvalidArgumentError("KV pool: negative block count");
  if (n > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV pool: ", n, " blocks wanted, ", free_.size(), " free"));
  }
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(n));
  int32_t last = after;
  for (int64_t i = 0; i < n; ++i) {
    auto it = last >= 0 ? free_.find(last + 1) : free_.end();
    if (it == free_.end()) it = free_.begin();
    last = *it;
    ids.push_back(last);
    free_.erase(it);
  }
  free_count_ = static_cast<int64_t>(free_.size());
  return ids;
}

void KvBlockPool::Free(std::span<const int32_t> ids) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int32_t id : ids) {
    KVG_CHECK(id >= 0 && id < options_.total_blocks) << "KV pool: block " << id << " out of range";
    KVG_CHECK(free_.insert(id).second) << "KV pool: block " << id << " freed twice";
  }
  free_count_ = static_cast<int64_t>(free_.size());
}

}  // namespace kvguard::engine
