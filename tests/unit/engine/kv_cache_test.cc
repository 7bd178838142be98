#include "services/engine/kv_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace kvguard::engine {
namespace {

KvCacheOptions SmallOptions() {
  return {.num_layers = 2, .num_kv_heads = 2, .head_dim = 4};
}

// Entry value encodes (head, position) so gathers can be checked exactly.
at::Tensor Entries(int64_t heads, int64_t first, int64_t n, int64_t dim) {
  at::Tensor t = at::empty({heads, n, dim});
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < n; ++i) t[h][i].fill_(double(h * 1000 + first + i));
  return t;
}

TEST(KvCacheTest, AppendGrowsAndKeepsOrder) {
  SequenceKvCache cache(SmallOptions());
  for (int64_t step = 0; step < 40; ++step) {
    cache.AppendTokenIds({static_cast<int32_t>(step)});
    for (int64_t l = 0; l < 2; ++l) cache.Append(l, Entries(2, step, 1, 4), Entries(2, step, 1, 4), step);
  }
  EXPECT_EQ(cache.RetainedSlots(0), 40);
  EXPECT_EQ(cache.Keys(1).size(1), 40);
  EXPECT_EQ(cache.Keys(1)[1][39][0].item<float>(), 1039.0f);
  EXPECT_EQ(cache.Positions(0)[1].back(), 39);
  EXPECT_EQ(cache.num_positions(), 40);
  KvCacheStats s = cache.Stats();
  EXPECT_EQ(s.bytes, 2 /*layers*/ * 2 /*k,v*/ * 40 * 2 * 4 * 4);
  EXPECT_GE(s.allocated_bytes, s.bytes);
}

TEST(KvCacheTest, RetainFreesMemoryAndKeepsPerHeadChoices) {
  SequenceKvCache cache(SmallOptions());
  cache.AppendTokenIds(std::vector<int32_t>(10, 7));
  for (int64_t l = 0; l < 2; ++l) cache.Append(l, Entries(2, 0, 10, 4), Entries(2, 0, 10, 4), 0);
  const int64_t before = cache.Stats().allocated_bytes;
  // Head 0 keeps positions 9, 0, 5 (given unsorted), head 1 keeps 1, 2, 3.
  ASSERT_TRUE(cache.Retain(0, {{9, 0, 5}, {1, 2, 3}}).ok());
  EXPECT_EQ(cache.RetainedSlots(0), 3);
  EXPECT_EQ(cache.Positions(0)[0], (std::vector<int32_t>{0, 5, 9}));
  EXPECT_EQ(cache.Positions(0)[1], (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(cache.Keys(0)[0][2][0].item<float>(), 9.0f);
  EXPECT_EQ(cache.Values(0)[1][0][3].item<float>(), 1001.0f);
  EXPECT_LT(cache.Stats().allocated_bytes, before);
  EXPECT_EQ(cache.LayerBytes(0), 2 * 3 * 2 * 4 * 4);
  EXPECT_EQ(cache.LayerBytes(1), 2 * 10 * 2 * 4 * 4);
  EXPECT_EQ(cache.Stats().evicted_slots, 2 * 7);
  // The token history is untouched by eviction (RECOVERY needs it).
  EXPECT_EQ(cache.num_positions(), 10);
}

TEST(KvCacheTest, RetainRejectsBadPlans) {
  SequenceKvCache cache(SmallOptions());
  cache.Append(0, Entries(2, 0, 4, 4), Entries(2, 0, 4, 4), 0);
  EXPECT_FALSE(cache.Retain(0, {{0, 1}}).ok());               // wrong head count
  EXPECT_FALSE(cache.Retain(0, {{0, 1}, {0}}).ok());          // unequal counts
  EXPECT_FALSE(cache.Retain(0, {{0, 9}, {0, 1}}).ok());       // slot out of range
  EXPECT_FALSE(cache.Retain(0, {{1, 1}, {0, 1}}).ok());       // repeated slot
  EXPECT_EQ(cache.RetainedSlots(0), 4);
}

}  // namespace
}  // namespace kvguard::engine
