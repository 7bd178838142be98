// RECOVERY: recomputed KV entries equal those of an uncompressed run when the
// prefix before them is intact, and a rebuilt cache holds the whole history;
// the sequence step protocol streams text safely and frees KV on cancel.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "services/engine/checkpoint.h"
#include "services/engine/llama_model.h"
#include "services/engine/sequence.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::engine {
namespace {

std::unique_ptr<LlamaModel> LoadModel(const std::string& name) {
  auto ckpt = OpenCheckpoint(testing::DataPath("models/" + name));
  EXPECT_TRUE(ckpt.ok());
  auto model = LlamaModel::Load(std::move(*ckpt), {});
  EXPECT_TRUE(model.ok());
  return std::move(*model);
}

// Entry of `position` in head h of layer l, or an undefined tensor.
at::Tensor EntryAt(const SequenceKvCache& cache, int64_t l, int64_t h, int32_t position,
                   bool keys) {
  const auto& pos = cache.Positions(l)[h];
  auto it = std::find(pos.begin(), pos.end(), position);
  if (it == pos.end()) return {};
  return (keys ? cache.Keys(l) : cache.Values(l))[h][it - pos.begin()];
}

class RecoveryTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RecoveryTest, RecomputedEntriesMatchUncompressedRun) {
  auto model = LoadModel(GetParam());
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(3 + (i * 31) % 600);
  SequenceKvCache full(model->CacheOptions(48)), evicted(model->CacheOptions(48));
  ForwardItem a{.cache = &full, .tokens = ids}, b{.cache = &evicted, .tokens = ids};
  ASSERT_TRUE(model->Forward({&a, 1}).ok());
  ASSERT_TRUE(model->Forward({&b, 1}).ok());
  // Evict positions 30..35 everywhere (the prefix 0..29 stays intact).
  const std::vector<int32_t> gone = {30, 31, 32, 33, 34, 35};
  for (int64_t l = 0; l < model->config().num_layers; ++l) {
    std::vector<int64_t> keep;
    for (int64_t s = 0; s < 40; ++s) {
      if (s < 30 || s > 35) keep.push_back(s);
    }
    ASSERT_TRUE(
        evicted.Retain(l, std::vector<std::vector<int64_t>>(model->config().num_kv_heads, keep))
            .ok());
  }
  ASSERT_TRUE(model->Recompute(evicted, gone).ok());
  for (int64_t l = 0; l < model->config().num_layers; ++l) {
    EXPECT_EQ(evicted.RetainedSlots(l), 40);
    EXPECT_TRUE(std::is_sorted(evicted.Positions(l)[0].begin(), evicted.Positions(l)[0].end()));
    for (int64_t h = 0; h < model->config().num_kv_heads; ++h) {
      for (int32_t p : gone) {
        at::Tensor k = EntryAt(evicted, l, h, p, true), v = EntryAt(evicted, l, h, p, false);
        ASSERT_TRUE(k.defined());
        EXPECT_TRUE(at::allclose(k, EntryAt(full, l, h, p, true), 1e-4, 1e-5))
            << l << " " << h << " " << p;
        EXPECT_TRUE(at::allclose(v, EntryAt(full, l, h, p, false), 1e-4, 1e-5))
            << l << " " << h << " " << p;
      }
    }
  }
  // Decoding continues identically to the uncompressed cache.
  ForwardItem next_a{.cache = &full, .tokens = {7}}, next_b{.cache = &evicted, .tokens = {7}};
  auto la = model->Forward({&next_a, 1}), lb = model->Forward({&next_b, 1});
  EXPECT_TRUE(at::allclose(*la, *lb, 1e-4, 1e-4));
}

// Per-head eviction (what snapkv, tova, ... do): head 0 lost 30..33, head 1
// lost 34..37 in every layer. Restoring fills each head with exactly what it
// lacks, a head that still holds a position keeps its own entry, and every
// entry equals the uncompressed run's.
TEST_P(RecoveryTest, RestoresPositionsMissingFromSomeHeadsOnly) {
  auto model = LoadModel(GetParam());
  const int64_t heads = model->config().num_kv_heads;
  ASSERT_GE(heads, 2);
  std::vector<int32_t> ids;
  for (int i = 0; i < 44; ++i) ids.push_back(3 + (i * 37) % 600);
  SequenceKvCache full(model->CacheOptions(48)), evicted(model->CacheOptions(48));
  ForwardItem a{.cache = &full, .tokens = ids}, b{.cache = &evicted, .tokens = ids};
  ASSERT_TRUE(model->Forward({&a, 1}).ok());
  ASSERT_TRUE(model->Forward({&b, 1}).ok());
  auto keep_without = [](int32_t lo, int32_t hi) {
    std::vector<int64_t> keep;
    for (int64_t s = 0; s < 44; ++s) {
      if (s < lo || s > hi) keep.push_back(s);
    }
    return keep;
  };
  for (int64_t l = 0; l < model->config().num_layers; ++l) {
    std::vector<std::vector<int64_t>> keep(heads, keep_without(34, 37));
    keep[0] = keep_without(30, 33);
    ASSERT_TRUE(evicted.Retain(l, keep).ok());
  }
  // Asking for one position of a layer whose heads would then differ widens
  // to everything the layer lacks.
  EXPECT_EQ(evicted.RestorableSet({31}), std::vector<int32_t>({30, 31, 32, 33, 34, 35, 36, 37}));
  EXPECT_TRUE(evicted.RestorableSet({5, 40}).empty());  // held by every head
  ASSERT_TRUE(model->Recompute(evicted, {31}).ok());
  for (int64_t l = 0; l < model->config().num_layers; ++l) {
    EXPECT_EQ(evicted.RetainedSlots(l), 44);
    for (int64_t h = 0; h < heads; ++h) {
      ASSERT_EQ(evicted.Positions(l)[h].size(), 44u);
      EXPECT_TRUE(std::is_sorted(evicted.Positions(l)[h].begin(), evicted.Positions(l)[h].end()));
      for (int32_t p = 28; p < 40; ++p) {
        at::Tensor k = EntryAt(evicted, l, h, p, true), v = EntryAt(evicted, l, h, p, false);
        ASSERT_TRUE(k.defined()) << l << " " << h << " " << p;
        EXPECT_TRUE(at::allclose(k, EntryAt(full, l, h, p, true), 1e-4, 1e-5))
            << l << " " << h << " " << p;
        EXPECT_TRUE(at::allclose(v, EntryAt(full, l, h, p, false), 1e-4, 1e-5))
            << l << " " << h << " " << p;
      }
    }
  }
  ForwardItem next_a{.cache = &full, .tokens = {7}}, next_b{.cache = &evicted, .tokens = {7}};
  auto la = model->Forward({&next_a, 1}), lb = model->Forward({&next_b, 1});
  EXPECT_TRUE(at::allclose(*la, *lb, 1e-4, 1e-4));
}

// A head-count mismatch is refused, not written: Insert of a set that heads
// lack unequally fails and leaves the layer as it was.
TEST_P(RecoveryTest, InsertRefusesUnequalHeads) {
  auto model = LoadModel(GetParam());
  const int64_t heads = model->config().num_kv_heads;
  std::vector<int32_t> ids(20, 9);
  SequenceKvCache cache(model->CacheOptions(24));
  ForwardItem item{.cache = &cache, .tokens = ids};
  ASSERT_TRUE(model->Forward({&item, 1}).ok());
  std::vector<std::vector<int64_t>> keep(heads);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t s = 0; s < 20; ++s) {
      if (s != (h == 0 ? 3 : 4)) keep[h].push_back(s);
    }
  }
  ASSERT_TRUE(cache.Retain(0, keep).ok());
  const int64_t hd = model->config().head_dim;
  at::Tensor kv = at::zeros({heads, 1, hd});
  EXPECT_EQ(cache.Insert(0, kv, kv, {3}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache.RetainedSlots(0), 19);
}

INSTANTIATE_TEST_SUITE_P(Models, RecoveryTest, ::testing::Values("tiny-llama", "tiny-qwen3"),
                         [](const auto& info) {
                           return info.param == "tiny-llama" ? "llama" : "qwen3";
                         });

TEST(SequenceTest, StopStringsNeverStreamAndTextIsUtf8Safe) {
  auto ckpt = OpenCheckpoint(testing::DataPath("models/tiny-qwen2"));
  auto tok = Tokenizer::Load(ckpt->tokenizer_path);
  auto model = LlamaModel::Load(std::move(*ckpt), {});
  GenerateRequest req;
  req.prompt_ids = *(*tok)->Encode("Tom has 3 apples.");
  req.max_new_tokens = 40;
  req.ignore_eos = true;
  // Learn what the model says, then stop on a piece of it.
  auto seq = Sequence::Create(**model, tok->get(), req, {});
  std::string streamed;
  while (ForwardItem* item = (*seq)->NextForward()) {
    auto logits = (*model)->Forward({item, 1});
    at::Tensor row = (*logits)[0].contiguous();
    auto r = (*seq)->AfterForward(row.data_ptr<float>());
    ASSERT_TRUE(r.ok());
    streamed += r->text_delta;
  }
  const std::string full = (*seq)->Result().text;
  EXPECT_EQ(streamed, full);
  ASSERT_GT(full.size(), 12u);
  const std::string stop = full.substr(full.size() / 2, 3);
  req.stop_strings = {stop};
  auto seq2 = Sequence::Create(**model, tok->get(), req, {});
  std::string streamed2;
  while (ForwardItem* item = (*seq2)->NextForward()) {
    auto logits = (*model)->Forward({item, 1});
    at::Tensor row = (*logits)[0].contiguous();
    auto r = (*seq2)->AfterForward(row.data_ptr<float>());
    streamed2 += r->text_delta;
  }
  EXPECT_EQ(streamed2, full.substr(0, full.find(stop)));
  EXPECT_EQ((*seq2)->Result().finish_reason, FinishReason::kStop);
}

// RECOVERY by rebuilding: after Rebuild() the next forward prefills the whole
// history into a fresh cache. Every position is held again, and that forward's
// logits are those of a fresh uncompressed sequence whose prompt is the
// history; the sequence then decodes on from there.
TEST(SequenceTest, RebuildPrefillsTheWholeHistoryIntoAFreshCache) {
  auto model = LoadModel("tiny-llama");
  GenerateRequest req;
  for (int i = 0; i < 48; ++i) req.prompt_ids.push_back(3 + (i * 37) % 500);
  req.max_new_tokens = 12;
  req.ignore_eos = true;
  req.compression = {.compressor = "snapkv", .options = {"window_size=8"}, .ratio = 0.75};
  auto seq = Sequence::Create(*model, nullptr, req, {});
  ASSERT_TRUE(seq.ok());
  auto step = [&](Sequence& s) {
    ForwardItem* item = s.NextForward();
    auto logits = model->Forward({item, 1});
    EXPECT_TRUE(logits.ok());
    at::Tensor row = (*logits)[0].contiguous();
    auto r = s.AfterForward(row.data_ptr<float>());
    EXPECT_TRUE(r.ok());
    return row;
  };
  for (int i = 0; i < 5; ++i) step(**seq);
  const SequenceKvCache& before = (*seq)->cache();
  const int64_t positions = before.num_positions();  // 48 + 4: the 5th token is not in yet
  ASSERT_LT(before.RetainedSlots(0), positions);
  auto lacking = (*seq)->Rebuild();
  ASSERT_TRUE(lacking.ok());
  EXPECT_EQ(*lacking, positions - static_cast<int64_t>(before.WholePositions().size()));
  EXPECT_EQ((*seq)->cache().num_positions(), positions);  // nothing changes before the forward
  (*seq)->SetEvictionPaused(true);
  std::vector<int32_t> history = req.prompt_ids;
  for (int32_t id : (*seq)->Result().output_ids) history.push_back(id);
  GenerateRequest plain = req;
  plain.prompt_ids = history;
  plain.compression = {};
  auto reference = Sequence::Create(*model, nullptr, plain, {});
  ASSERT_TRUE(reference.ok());
  const at::Tensor rebuilt = step(**seq), fresh = step(**reference);
  EXPECT_TRUE(at::allclose(rebuilt, fresh, 1e-5, 1e-5));
  for (int64_t l = 0; l < model->config().num_layers; ++l)
    EXPECT_EQ((*seq)->cache().RetainedSlots(l), positions + 1) << l;
  EXPECT_EQ((*seq)->Result().recomputed_positions, *lacking);
  while (!(*seq)->finished()) step(**seq);
  EXPECT_EQ((*seq)->Result().output_ids.size(), 12u);
}

TEST(SequenceTest, CancelFreesKv) {
  auto model = LoadModel("tiny-llama");
  GenerateRequest req;
  req.prompt_ids = std::vector<int32_t>(64, 5);
  req.max_new_tokens = 10;
  auto seq = Sequence::Create(*model, nullptr, req, {});
  ForwardItem* item = (*seq)->NextForward();
  ASSERT_TRUE(model->Forward({item, 1}).ok());
  EXPECT_GT((*seq)->cache().Stats().bytes, 0);
  (*seq)->Cancel();
  EXPECT_TRUE((*seq)->finished());
  EXPECT_EQ((*seq)->cache().Stats().bytes, 0);
  EXPECT_EQ((*seq)->NextForward(), nullptr);
  EXPECT_EQ((*seq)->Result().finish_reason, FinishReason::kCancelled);
}

}  // namespace
}  // namespace kvguard::engine
