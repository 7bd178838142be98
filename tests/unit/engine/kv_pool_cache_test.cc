// The KV pool under real caches and sequences: paged layer stores hold
// exactly what dense ones do, eviction hands blocks back, preemption (swap
// out / in) leaves a greedy generation unchanged, and packed (KIVI) layers
// are charged to the same pool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <functional>

#include "services/engine/checkpoint.h"
#include "services/engine/kv_cache.h"
#include "services/engine/llama_model.h"
#include "services/engine/sequence.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::engine {
namespace {

constexpr int64_t kHeads = 2, kDim = 4, kLayers = 2;

std::shared_ptr<KvArena> Arena(int64_t blocks, int64_t block_tokens = 4) {
  const LayerShape shape{.kv_heads = kHeads, .head_dim = kDim};
  auto arena = NewKvArena(shape, blocks * block_tokens * TokenBytes(shape), block_tokens);
  EXPECT_TRUE(arena.ok()) << arena.status();
  return *arena;
}

KvCacheOptions Options(std::shared_ptr<KvArena> arena) {
  return {
      .num_layers = kLayers, .num_kv_heads = kHeads, .head_dim = kDim, .arena = std::move(arena)};
}

void AppendRandom(SequenceKvCache& a, SequenceKvCache& b, int64_t n) {
  const int64_t first = a.num_positions();
  a.AppendTokenIds(std::vector<int32_t>(n, 1));
  b.AppendTokenIds(std::vector<int32_t>(n, 1));
  for (int64_t l = 0; l < kLayers; ++l) {
    at::Tensor k = at::randn({kHeads, n, kDim}), v = at::randn({kHeads, n, kDim});
    a.Append(l, k, v, first);
    b.Append(l, k, v, first);
  }
}

void ExpectSame(const SequenceKvCache& a, const SequenceKvCache& b) {
  for (int64_t l = 0; l < kLayers; ++l) {
    ASSERT_EQ(a.Positions(l), b.Positions(l));
    EXPECT_TRUE(at::equal(a.Keys(l), b.Keys(l))) << "layer " << l;
    EXPECT_TRUE(at::equal(a.Values(l), b.Values(l))) << "layer " << l;
  }
}

TEST(KvPoolCacheTest, PagedStoreHoldsWhatADenseOneHolds) {
  auto arena = Arena(64);
  SequenceKvCache paged(Options(arena)), dense(Options(nullptr));
  // A second pooled cache grows in between, so the first one's blocks are
  // not consecutive and reads go through the gather path too.
  SequenceKvCache other(Options(arena)), other_dense(Options(nullptr));
  for (int step = 0; step < 6; ++step) {
    AppendRandom(paged, dense, step == 0 ? 7 : 3);
    AppendRandom(other, other_dense, 5);
  }
  ExpectSame(paged, dense);
  ExpectSame(other, other_dense);
  EXPECT_EQ(paged.BlocksHeld(), kLayers * 6);  // 22 tokens in blocks of 4, per layer
  // Evict: keep every third slot, per head a different phase.
  for (int64_t l = 0; l < kLayers; ++l) {
    std::vector<std::vector<int64_t>> keep(kHeads);
    for (int64_t h = 0; h < kHeads; ++h)
      for (int64_t s = h; s < paged.RetainedSlots(l); s += 3) keep[h].push_back(s);
    keep[1].resize(keep[0].size());
    ASSERT_TRUE(paged.Retain(l, keep).ok());
    ASSERT_TRUE(dense.Retain(l, keep).ok());
  }
  ExpectSame(paged, dense);
  EXPECT_EQ(paged.BlocksHeld(), kLayers * 2);  // 8 kept tokens: the other blocks went back
  EXPECT_EQ(arena->pool->used_blocks(), paged.BlocksHeld() + other.BlocksHeld());
  AppendRandom(paged, dense, 9);  // grows into freed blocks again
  ExpectSame(paged, dense);
}

TEST(KvPoolCacheTest, BlocksToAppendIsWhatAppendTakes) {
  auto arena = Arena(32);
  SequenceKvCache paged(Options(arena)), dense(Options(nullptr));
  for (int64_t n : {1, 3, 4, 9, 1}) {
    const int64_t before = arena->pool->free_blocks();
    const int64_t predicted = paged.BlocksToAppend(n);
    AppendRandom(paged, dense, n);
    EXPECT_EQ(before - arena->pool->free_blocks(), predicted) << n;
  }
}

TEST(KvPoolCacheTest, SwapOutFreesEveryBlockAndSwapInRestoresTheEntries) {
  auto arena = Arena(16);
  SequenceKvCache paged(Options(arena)), dense(Options(nullptr));
  AppendRandom(paged, dense, 10);
  const int64_t held = paged.BlocksHeld();
  paged.SwapOut();
  EXPECT_TRUE(paged.swapped_out());
  EXPECT_EQ(arena->pool->used_blocks(), 0);
  EXPECT_EQ(paged.BlocksToSwapIn(), held);
  ExpectSame(paged, dense);  // readable while out (the stats and compressors may look)
  // Someone else takes all but one block: swapping in must fail and change nothing.
  auto taken = arena->pool->Allocate(15);
  ASSERT_TRUE(taken.ok());
  EXPECT_EQ(paged.SwapIn().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(paged.swapped_out());
  EXPECT_EQ(arena->pool->free_blocks(), 1);
  arena->pool->Free(*taken);
  ASSERT_TRUE(paged.SwapIn().ok());
  EXPECT_EQ(paged.BlocksHeld(), held);
  ExpectSame(paged, dense);
  AppendRandom(paged, dense, 2);
  ExpectSame(paged, dense);
}

TEST(KvPoolCacheTest, DestroyingACacheReturnsItsBlocks) {
  auto arena = Arena(16);
  {
    SequenceKvCache paged(Options(arena)), dense(Options(nullptr));
    AppendRandom(paged, dense, 13);
    EXPECT_GT(arena->pool->used_blocks(), 0);
  }
  EXPECT_EQ(arena->pool->used_blocks(), 0);
}

TEST(KvPoolCacheTest, PackedLayersAreChargedToThePool) {
  auto arena = Arena(64, 16);
  KvCacheOptions options = Options(arena);
  options.head_dim = kDim;
  options.quantize = true;
  options.kivi = {.spec = {.bits = 2, .group_size = 4}, .residual = 8};
  {
    SequenceKvCache packed(options);
    KvCacheOptions plain = options;
    plain.arena = nullptr;
    SequenceKvCache reference(plain);
    AppendRandom(packed, reference, 40);
    const int64_t bytes = packed.Stats().allocated_bytes;
    EXPECT_EQ(arena->pool->used_blocks(), packed.BlocksHeld());
    // Whole blocks covering the packed bytes, no more.
    EXPECT_GE(packed.BlocksHeld() * arena->pool->block_bytes(), bytes);
    EXPECT_LT((packed.BlocksHeld() - kLayers) * arena->pool->block_bytes(), bytes);
    ExpectSame(packed, reference);
  }
  EXPECT_EQ(arena->pool->used_blocks(), 0);
}

// --- whole sequences on a real checkpoint ---

std::unique_ptr<LlamaModel> LoadModel() {
  auto ckpt = OpenCheckpoint(testing::DataPath("models/tiny-qwen2"));
  EXPECT_TRUE(ckpt.ok());
  auto model = LlamaModel::Load(std::move(*ckpt), {});
  EXPECT_TRUE(model.ok());
  return std::move(*model);
}

// A block pool of `bytes` in 16-token blocks for `model`'s KV.
std::shared_ptr<KvArena> ModelPool(const LlamaModel& model, int64_t bytes) {
  const KvCacheOptions co = model.CacheOptions();
  auto arena = NewKvArena({.kv_heads = co.num_kv_heads, .head_dim = co.head_dim, .dtype = co.dtype},
                          bytes, 16);
  EXPECT_TRUE(arena.ok()) << arena.status();
  return *arena;
}

// A greedy request of `prompt` tokens (3 + i * stride mod 500) and `max_new`
// tokens, compressed at 0.5 by `compressor` (none when empty).
GenerateRequest Request(int prompt, int stride, int max_new, const std::string& compressor) {
  GenerateRequest r;
  for (int i = 0; i < prompt; ++i) r.prompt_ids.push_back(3 + (i * stride) % 500);
  r.max_new_tokens = max_new;
  r.ignore_eos = true;
  if (!compressor.empty()) r.compression = {.compressor = compressor, .ratio = 0.5};
  return r;
}

// Greedy ids of one request; `preempt_at` swaps the KV out and back in
// before those steps (another sequence takes the freed blocks meanwhile);
// `after_step` runs after every step with the step count so far.
std::vector<int32_t> Generate(LlamaModel& model, const GenerateRequest& request,
                              std::shared_ptr<KvArena> arena, std::set<int64_t> preempt_at = {},
                              const std::function<void(int64_t)>& after_step = nullptr) {
  auto seq = Sequence::Create(model, nullptr, request, {.kv_arena = arena});
  EXPECT_TRUE(seq.ok()) << seq.status();
  while (!(*seq)->finished()) {
    if (preempt_at.count((*seq)->step())) {
      (*seq)->Preempt();
      EXPECT_TRUE((*seq)->preempted());
      // The freed blocks serve someone else, then come back dirty.
      auto grabbed = arena->pool->Allocate(arena->pool->free_blocks());
      EXPECT_TRUE(grabbed.ok());
      for (int32_t b : *grabbed) {
        const int64_t t = arena->pool->block_tokens();
        arena->keys.narrow(1, b * t, t).fill_(7.0);
        arena->values.narrow(1, b * t, t).fill_(-7.0);
      }
      arena->pool->Free(*grabbed);
      EXPECT_TRUE((*seq)->Resume().ok());
    }
    ForwardItem* item = (*seq)->NextForward();
    if (arena != nullptr) {
      EXPECT_LE((*seq)->BlocksForNextStep(), arena->pool->free_blocks());
    }
    auto logits = model.Forward({item, 1});
    EXPECT_TRUE(logits.ok());
    at::Tensor row = logits->contiguous();
    EXPECT_TRUE((*seq)->AfterForward(row[0].data_ptr<float>()).ok());
    if (after_step) after_step((*seq)->step());
  }
  return (*seq)->Result().output_ids;
}

class KvPoolSequenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(KvPoolSequenceTest, PooledAndPreemptedGenerationsEqualTheUnpooledOne) {
  auto model = LoadModel();
  const GenerateRequest request = Request(48, 37, 24, GetParam());
  const std::shared_ptr<KvArena> arena = ModelPool(*model, 1 << 20);
  const std::vector<int32_t> reference = Generate(*model, request, nullptr);
  EXPECT_EQ(Generate(*model, request, arena), reference);
  EXPECT_EQ(Generate(*model, request, arena, {1, 5, 17}), reference);
  EXPECT_EQ(arena->pool->used_blocks(), 0);
}

// A sequence scores and evicts on the calling thread (small caches: waking
// the OpenMP team costs more than the ops) and gives the thread its setting
// back after every step; the ids equal a one-thread run's.
TEST(SequenceThreadsTest, CompressionLeavesTheThreadSettingAsItWas) {
  auto model = LoadModel();
  GenerateRequest request;
  for (int i = 0; i < 40; ++i) request.prompt_ids.push_back(3 + (i * 53) % 500);
  request.max_new_tokens = 16;
  request.ignore_eos = true;
  request.compression = {.compressor = "snapkv", .options = {"window_size=8"}, .ratio = 0.5};
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const std::vector<int32_t> one_thread = Generate(*model, request, nullptr);
  at::set_num_threads(2);
  const std::vector<int32_t> two_threads = Generate(*model, request, nullptr, {}, [](int64_t step) {
    EXPECT_EQ(at::get_num_threads(), 2) << "step " << step;
  });
  EXPECT_EQ(two_threads, one_thread);
  at::set_num_threads(before);
}

// Ids of a batch generated together in one shared block pool; `parallel`
// steps it with AfterForwardAll, otherwise one sequence after another.
std::vector<std::vector<int32_t>> GenerateTogether(LlamaModel& model,
                                                   const std::vector<GenerateRequest>& requests,
                                                   bool parallel) {
  const std::shared_ptr<KvArena> arena = ModelPool(model, 4 << 20);
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (const auto& r : requests) {
    auto seq = Sequence::Create(model, nullptr, r, {.kv_arena = arena});
    EXPECT_TRUE(seq.ok()) << seq.status();
    seqs.push_back(std::move(*seq));
  }
  for (;;) {
    std::vector<ForwardItem> items;
    std::vector<Sequence*> live;
    for (auto& s : seqs) {
      if (ForwardItem* item = s->NextForward()) items.push_back(*item), live.push_back(s.get());
    }
    if (items.empty()) break;
    auto logits = model.Forward(items);
    EXPECT_TRUE(logits.ok()) << logits.status();
    at::Tensor host = logits->contiguous();
    if (parallel) {
      for (auto& step : AfterForwardAll(live, host.data_ptr<float>(), host.size(1)))
        EXPECT_TRUE(step.ok()) << step.status();
    } else {
      for (size_t i = 0; i < live.size(); ++i)
        EXPECT_TRUE(live[i]->AfterForward(host[static_cast<int64_t>(i)].data_ptr<float>()).ok());
    }
  }
  std::vector<std::vector<int32_t>> ids;
  for (auto& s : seqs) ids.push_back(s->Result().output_ids);
  seqs.clear();
  EXPECT_EQ(arena->pool->used_blocks(), 0);
  return ids;
}

// A batch stepped by AfterForwardAll (sequences compressing in parallel, one
// shared block pool) gets the ids of the same batch stepped one by one.
TEST(SequenceThreadsTest, ParallelStepsOfABatchEqualSerialOnes) {
  auto model = LoadModel();
  const std::vector<std::string> compressors = {"snapkv", "tova", "streaming_llm", "", "snapkv"};
  std::vector<GenerateRequest> requests;
  for (int s = 0; s < static_cast<int>(compressors.size()); ++s)
    requests.push_back(Request(40 + 7 * s, 31 + s, 24, compressors[s]));
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  const auto parallel = GenerateTogether(*model, requests, true);
  const auto serial = GenerateTogether(*model, requests, false);
  at::set_num_threads(threads);
  ASSERT_EQ(parallel.size(), requests.size());
  for (size_t s = 0; s < requests.size(); ++s) {
    EXPECT_EQ(parallel[s], serial[s]) << s;
    EXPECT_EQ(parallel[s].size(), 24u);
  }
}

INSTANTIATE_TEST_SUITE_P(Compressors, KvPoolSequenceTest,
                         ::testing::Values("", "snapkv", "streaming_llm", "tova", "kivi"),
                         [](const auto& info) { return info.param.empty() ? "none" : info.param; });

}  // namespace
}  // namespace kvguard::engine
