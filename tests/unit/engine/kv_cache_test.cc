#include "services/engine/kv_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace kvguard::engine {
namespace {

KvCacheOptions SmallOptions() { return {.num_layers = 2, .num_kv_heads = 2, .head_dim = 4}; }

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
    for (int64_t l = 0; l < 2; ++l)
      cache.Append(l, Entries(2, step, 1, 4), Entries(2, step, 1, 4), step);
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

TEST(KvCacheTest, AttentionSumsFollowTheirSlotsThroughRetainAndNewSlotsStartAtZero) {
  KvCacheOptions o = SmallOptions();
  o.num_heads = 4;  // two query heads per kv head
  o.needs.attention_sums = true;
  SequenceKvCache cache(o);
  cache.Append(0, Entries(2, 0, 10, 4), Entries(2, 0, 10, 4), 0);
  // sum[h][r][slot] = 100 h + 10 r + slot, count[h][slot] = slot + 1.
  LayerAttentionStats& st = cache.MutableAttentionStats(0);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t t = 0; t < 10; ++t) {
      for (int64_t r = 0; r < 2; ++r) st.attention_sum[h][r][t].fill_(double(100 * h + 10 * r + t));
      st.attention_count[h][t].fill_(double(t + 1));
    }
  }
  const int64_t capacity = st.attention_sum.size(2);
  ASSERT_TRUE(cache.Retain(0, {{9, 0, 5}, {1, 2, 3}}).ok());
  at::Tensor sum = cache.AttentionSum(0), count = cache.AttentionCount(0);
  ASSERT_EQ(sum.size(2), 3);
  const std::vector<std::vector<int64_t>> kept{{0, 5, 9}, {1, 2, 3}};
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 3; ++i) {
      const int64_t t = kept[h][i];
      EXPECT_EQ(sum[h][1][i].item<float>(), float(100 * h + 10 + t)) << h << " " << i;
      EXPECT_EQ(count[h][i].item<float>(), float(t + 1)) << h << " " << i;
    }
  }
  // The rows keep their capacity (no regrow on the next append), and the
  // appended slot starts from zero, not from what an evicted slot held.
  cache.Append(0, Entries(2, 10, 1, 4), Entries(2, 10, 1, 4), 10);
  EXPECT_EQ(cache.MutableAttentionStats(0).attention_sum.size(2), capacity);
  EXPECT_EQ(cache.AttentionSum(0)[1][0][3].item<float>(), 0.0f);
  EXPECT_EQ(cache.AttentionCount(0)[0][3].item<float>(), 0.0f);
}

TEST(KvCacheTest, RetainRejectsBadPlans) {
  SequenceKvCache cache(SmallOptions());
  cache.Append(0, Entries(2, 0, 4, 4), Entries(2, 0, 4, 4), 0);
  EXPECT_FALSE(cache.Retain(0, {{0, 1}}).ok());          // wrong head count
  EXPECT_FALSE(cache.Retain(0, {{0, 1}, {0}}).ok());     // unequal counts
  EXPECT_FALSE(cache.Retain(0, {{0, 9}, {0, 1}}).ok());  // slot out of range
  EXPECT_FALSE(cache.Retain(0, {{1, 1}, {0, 1}}).ok());  // repeated slot
  EXPECT_EQ(cache.RetainedSlots(0), 4);
}

}  // namespace
}  // namespace kvguard::engine
