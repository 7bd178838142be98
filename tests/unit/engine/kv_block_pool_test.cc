// The KV pool's block bookkeeping: all-or-nothing allocation, contiguous
// hand-out where possible, exact counts after frees.
#include "services/engine/kv_block_pool.h"

#include <gtest/gtest.h>

namespace kvguard::engine {
namespace {

std::shared_ptr<KvBlockPool> Pool(int64_t blocks) {
  auto pool = KvBlockPool::Create({.total_blocks = blocks, .block_tokens = 16, .block_bytes = 512});
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *pool;
}

TEST(KvBlockPoolTest, RejectsBadOptions) {
  EXPECT_FALSE(KvBlockPool::Create({.total_blocks = 0, .block_tokens = 16, .block_bytes = 1}).ok());
  EXPECT_FALSE(KvBlockPool::Create({.total_blocks = 4, .block_tokens = 0, .block_bytes = 1}).ok());
  EXPECT_FALSE(KvBlockPool::Create({.total_blocks = 4, .block_tokens = 16, .block_bytes = 0}).ok());
}

TEST(KvBlockPoolTest, AllocatesAllOrNothing) {
  auto pool = Pool(8);
  EXPECT_EQ(pool->total_bytes(), 8 * 512);
  auto a = pool->Allocate(5);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->size(), 5u);
  EXPECT_EQ(pool->free_blocks(), 3);
  auto b = pool->Allocate(4);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->free_blocks(), 3);  // nothing taken
  pool->Free(*a);
  EXPECT_EQ(pool->free_blocks(), 8);
  EXPECT_EQ(pool->used_blocks(), 0);
}

TEST(KvBlockPoolTest, PrefersTheBlockAfterTheStoresLast) {
  auto pool = Pool(16);
  auto a = *pool->Allocate(2);  // 0, 1
  auto b = *pool->Allocate(2);  // 2, 3
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(b, (std::vector<int32_t>{2, 3}));
  // A grows after 1: 2 is taken, so it gets the lowest free block.
  EXPECT_EQ(*pool->Allocate(1, a.back()), (std::vector<int32_t>{4}));
  // b grows after 3: 4 is gone too; after a free of 4, b's successor run continues there.
  pool->Free(std::vector<int32_t>{4});
  EXPECT_EQ(*pool->Allocate(3, b.back()), (std::vector<int32_t>{4, 5, 6}));
}

TEST(KvBlockPoolTest, BlocksForTokensRoundsUp) {
  auto pool = Pool(4);
  EXPECT_EQ(pool->BlocksForTokens(0), 0);
  EXPECT_EQ(pool->BlocksForTokens(1), 1);
  EXPECT_EQ(pool->BlocksForTokens(16), 1);
  EXPECT_EQ(pool->BlocksForTokens(17), 2);
}

TEST(KvBlockPoolDeathTest, DoubleFreeIsABug) {
  auto pool = Pool(4);
  auto a = *pool->Allocate(1);
  pool->Free(a);
  EXPECT_DEATH(pool->Free(a), "freed twice");
}

}  // namespace
}  // namespace kvguard::engine
