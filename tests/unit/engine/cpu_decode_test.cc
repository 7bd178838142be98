// The CPU decode loops (llama_decode_cpu.cc, cpu_attention.cc) against the
// libtorch ops they replace: each model is loaded twice, once with
// fused_cpu_decode = false, both are fed the same tokens, and every decode
// step's logits are compared. Covers GQA, qkv bias (qwen2), per-head q/k norm
// (qwen3), scaled RoPE (llama 3.1), bf16 rounding, batches of sequences of
// different lengths, and paged caches whose blocks are scattered.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "services/engine/checkpoint.h"
#include "services/engine/llama_model.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::engine {
namespace {

std::unique_ptr<LlamaModel> Load(const std::string& name, const std::string& dtype, bool fused) {
  auto ckpt = OpenCheckpoint(testing::DataPath("models/" + name));
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto model = LlamaModel::Load(std::move(*ckpt), {.dtype = dtype, .fused_cpu_decode = fused});
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

struct Drift {
  double relative = 0;  // max |fused - torch| / max |torch| over all steps
  int agree = 0;        // steps x sequences whose argmax agrees
  int total = 0;
};

// Prefills `batch` prompts of different lengths (the libtorch path in both
// models), then decodes `steps` tokens for all of them together, feeding both
// models the reference model's greedy choice.
Drift DecodeBoth(LlamaModel& fused, LlamaModel& reference, int batch, int steps,
                 const KvCacheOptions& fused_options, const KvCacheOptions& reference_options) {
  std::vector<std::unique_ptr<SequenceKvCache>> caches_f, caches_r;
  std::vector<int32_t> next(batch);
  const int32_t vocab = static_cast<int32_t>(reference.config().vocab_size);
  for (int b = 0; b < batch; ++b) {
    caches_f.push_back(std::make_unique<SequenceKvCache>(fused_options));
    caches_r.push_back(std::make_unique<SequenceKvCache>(reference_options));
    std::vector<int32_t> prompt;
    for (int i = 0; i < 5 + 4 * b; ++i) prompt.push_back((7 + 13 * i + 5 * b) % vocab);
    ForwardItem f{.cache = caches_f.back().get(), .tokens = prompt};
    ForwardItem r{.cache = caches_r.back().get(), .tokens = prompt};
    auto lf = fused.Forward({&f, 1});
    auto lr = reference.Forward({&r, 1});
    EXPECT_TRUE(lf.ok() && lr.ok());
    next[b] = static_cast<int32_t>(lr->argmax(-1).item<int64_t>());
  }
  Drift drift;
  double max_ref = 0, max_diff = 0;
  for (int s = 0; s < steps; ++s) {
    std::vector<ForwardItem> items_f, items_r;
    for (int b = 0; b < batch; ++b) {
      items_f.push_back({.cache = caches_f[b].get(), .tokens = {next[b]}});
      items_r.push_back({.cache = caches_r[b].get(), .tokens = {next[b]}});
    }
    EXPECT_TRUE(fused.DecodesOnCpu(items_f));
    EXPECT_FALSE(reference.DecodesOnCpu(items_r));
    auto lf = fused.Forward(items_f);
    auto lr = reference.Forward(items_r);
    EXPECT_TRUE(lf.ok() && lr.ok());
    if (!lf.ok() || !lr.ok()) return drift;
    max_ref = std::max(max_ref, lr->abs().max().item<double>());
    max_diff = std::max(max_diff, (*lf - *lr).abs().max().item<double>());
    at::Tensor choice_f = lf->argmax(-1), choice_r = lr->argmax(-1);
    for (int b = 0; b < batch; ++b) {
      next[b] = static_cast<int32_t>(choice_r[b].item<int64_t>());
      drift.agree += choice_f[b].item<int64_t>() == next[b];
      ++drift.total;
    }
  }
  drift.relative = max_diff / max_ref;
  return drift;
}

struct Case {
  std::string model, dtype;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.model << " " << c.dtype; }

class CpuDecodeTest : public ::testing::TestWithParam<Case> {};

TEST_P(CpuDecodeTest, LoopsMatchTheLibtorchOps) {
  auto fused = Load(GetParam().model, GetParam().dtype, true);
  auto reference = Load(GetParam().model, GetParam().dtype, false);
  const Drift d =
      DecodeBoth(*fused, *reference, 1, 24, fused->CacheOptions(), reference->CacheOptions());
  if (GetParam().dtype == "f32") {
    EXPECT_LT(d.relative, 1e-5);  // summation order only
    EXPECT_EQ(d.agree, d.total);
  } else {
    // Both paths round every activation to bf16 at the same points; a
    // different summation order still flips single bf16 roundings, which
    // these random-weight models amplify (measured 1.2-3.7%).
    EXPECT_LT(d.relative, 0.08);
    EXPECT_GE(d.agree, d.total - 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CpuDecodeTest,
                         ::testing::Values(Case{"tiny-llama", "f32"}, Case{"tiny-llama", "bf16"},
                                           Case{"tiny-llama31-ropescaled", "f32"},
                                           Case{"tiny-qwen2", "f32"}, Case{"tiny-qwen2", "bf16"},
                                           Case{"tiny-qwen3", "f32"}, Case{"tiny-qwen3", "bf16"},
                                           Case{"tiny-qwen2-bf16", "bf16"}),
                         [](const auto& info) {
                           std::string name = info.param.model + "_" + info.param.dtype;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// `batch` tiny-qwen2 f32 sequences decoded `steps` times by the loops match the ops.
void ExpectLoopsMatchOps(int batch, int steps) {
  auto fused = Load("tiny-qwen2", "f32", true);
  auto reference = Load("tiny-qwen2", "f32", false);
  const Drift d = DecodeBoth(*fused, *reference, batch, steps, fused->CacheOptions(),
                             reference->CacheOptions());
  EXPECT_LT(d.relative, 1e-5);
  EXPECT_EQ(d.agree, d.total);
}

// f32 decodes up to 16 sequences per MatVec; caches of different lengths.
TEST(CpuDecodeBatchTest, SequencesOfDifferentLengthsDecodeTogether) { ExpectLoopsMatchOps(3, 12); }

// Two sequences sharing a pool of 4-token blocks take turns, so each holds
// non-consecutive blocks: attention reads several spans per layer.
TEST(CpuDecodeBatchTest, PagedCacheWithScatteredBlocksReadsEverySpan) {
  auto fused = Load("tiny-llama", "f32", true);
  auto reference = Load("tiny-llama", "f32", false);
  auto arena_for = [](const LlamaModel& m) {
    const KvCacheOptions o = m.CacheOptions();
    const LayerShape shape{.kv_heads = o.num_kv_heads, .head_dim = o.head_dim, .dtype = o.dtype};
    auto arena = NewKvArena(shape, 4096 * TokenBytes(shape), 4);
    EXPECT_TRUE(arena.ok()) << arena.status();
    KvCacheOptions paged = o;
    paged.arena = *arena;
    return paged;
  };
  const KvCacheOptions fused_options = arena_for(*fused);
  const Drift d = DecodeBoth(*fused, *reference, 2, 14, fused_options, arena_for(*reference));
  EXPECT_LT(d.relative, 1e-5);
  EXPECT_EQ(d.agree, d.total);

  // The same interleaving, observed: the second sequence's blocks are not consecutive.
  SequenceKvCache a(fused_options), b(fused_options);
  for (int s = 0; s < 6; ++s) {
    for (SequenceKvCache* cache : {&a, &b}) {
      ForwardItem item{.cache = cache, .tokens = {static_cast<int32_t>(3 + s)}};
      ASSERT_TRUE(fused->Forward({&item, 1}).ok());
    }
  }
  std::vector<KvSpan> spans;
  ASSERT_TRUE(b.AttentionSpans(0, spans));
  EXPECT_GT(spans.size(), 1u);
  int64_t slots = 0;
  for (const KvSpan& span : spans) slots += span.slots;
  EXPECT_EQ(slots, b.RetainedSlots(0));
}

// More sequences than one MatVec takes: f32 decodes them in chunks of 16.
TEST(CpuDecodeBatchTest, BatchesAboveSixteenRowsRunInChunks) { ExpectLoopsMatchOps(21, 4); }

// The statistics compressors (SnapKV/TOVA's recent queries) and the guard
// (attention sums for RECOVERY) read are kept by the loops as by the ops.
TEST(CpuDecodeBatchTest, KeepsRecentQueriesAndAttentionSums) {
  auto fused = Load("tiny-qwen2", "f32", true);
  auto reference = Load("tiny-qwen2", "f32", false);
  const AttentionNeeds needs{.query_window = 6, .attention_sums = true};
  SequenceKvCache cf(fused->CacheOptions(0, needs)), cr(reference->CacheOptions(0, needs));
  std::vector<int32_t> prompt{3, 9, 4, 7};  // shorter than the window: it fills while decoding
  ForwardItem pf{.cache = &cf, .tokens = prompt}, pr{.cache = &cr, .tokens = prompt};
  ASSERT_TRUE(fused->Forward({&pf, 1}).ok() && reference->Forward({&pr, 1}).ok());
  for (int step = 0; step < 9; ++step) {
    ForwardItem f{.cache = &cf, .tokens = {static_cast<int32_t>(5 + step)}};
    ForwardItem r{.cache = &cr, .tokens = {static_cast<int32_t>(5 + step)}};
    ASSERT_TRUE(fused->DecodesOnCpu({&f, 1}));
    ASSERT_TRUE(fused->Forward({&f, 1}).ok() && reference->Forward({&r, 1}).ok());
  }
  for (int64_t l = 0; l < reference->config().num_layers; ++l) {
    const LayerAttentionStats& a = cf.MutableAttentionStats(l);
    const LayerAttentionStats& b = cr.MutableAttentionStats(l);
    EXPECT_EQ(a.recent_positions, b.recent_positions) << "layer " << l;
    ASSERT_EQ(a.recent_queries.sizes(), b.recent_queries.sizes()) << "layer " << l;
    EXPECT_TRUE(at::allclose(a.recent_queries, b.recent_queries, 1e-5, 1e-5)) << "layer " << l;
    EXPECT_TRUE(at::allclose(cf.AttentionSum(l), cr.AttentionSum(l), 1e-3, 1e-4)) << "layer " << l;
    EXPECT_TRUE(at::equal(cf.AttentionCount(l), cr.AttentionCount(l))) << "layer " << l;
  }
}

// A step where one sequence prefills while others decode: the decode rows take
// the loops, the prefill the ops, and the logit rows keep batch order.
TEST(CpuDecodeBatchTest, MixedPrefillAndDecodeStepKeepsRowOrder) {
  auto fused = Load("tiny-llama", "f32", true);
  auto reference = Load("tiny-llama", "f32", false);
  SequenceKvCache f1(fused->CacheOptions()), f2(fused->CacheOptions()), f3(fused->CacheOptions());
  SequenceKvCache r1(reference->CacheOptions()), r2(reference->CacheOptions()),
      r3(reference->CacheOptions());
  for (auto [f, r] : {std::pair{&f1, &r1}, {&f3, &r3}}) {
    ForwardItem a{.cache = f, .tokens = {1, 2, 3, 4}}, b{.cache = r, .tokens = {1, 2, 3, 4}};
    ASSERT_TRUE(fused->Forward({&a, 1}).ok() && reference->Forward({&b, 1}).ok());
  }
  std::vector<ForwardItem> step_f{{.cache = &f1, .tokens = {5}},
                                  {.cache = &f2, .tokens = {6, 7, 8}, .all_logits = true},
                                  {.cache = &f3, .tokens = {9}}};
  std::vector<ForwardItem> step_r{{.cache = &r1, .tokens = {5}},
                                  {.cache = &r2, .tokens = {6, 7, 8}, .all_logits = true},
                                  {.cache = &r3, .tokens = {9}}};
  EXPECT_FALSE(fused->DecodesOnCpu(step_f));
  auto lf = fused->Forward(step_f);
  auto lr = reference->Forward(step_r);
  ASSERT_TRUE(lf.ok() && lr.ok());
  ASSERT_EQ(lf->size(0), 5);
  EXPECT_LT((*lf - *lr).abs().max().item<double>() / lr->abs().max().item<double>(), 1e-5);
}

// Prefill attention as loops (cpu::PrefillAttention) against the libtorch ops:
// every new token's logits, a second chunk over a cached prefix, and the
// H2O-style attention sums and counts a compressor or the guard reads.
void PrefillBoth(const std::string& model, const std::string& dtype, double tolerance) {
  auto fused = Load(model, dtype, true);
  auto reference = Load(model, dtype, false);
  const AttentionNeeds needs{.attention_sums = true};
  SequenceKvCache cf(fused->CacheOptions(0, needs)), cr(reference->CacheOptions(0, needs));
  const int32_t vocab = static_cast<int32_t>(reference->config().vocab_size);
  for (int chunk : {37, 11}) {  // a prompt, then more tokens over its cache
    std::vector<int32_t> ids;
    for (int i = 0; i < chunk; ++i) ids.push_back((5 + 11 * i + chunk) % vocab);
    ForwardItem f{.cache = &cf, .tokens = ids, .all_logits = true};
    ForwardItem r{.cache = &cr, .tokens = ids, .all_logits = true};
    auto lf = fused->Forward({&f, 1});
    auto lr = reference->Forward({&r, 1});
    ASSERT_TRUE(lf.ok() && lr.ok());
    ASSERT_EQ(lf->size(0), chunk);
    const double scale = lr->abs().max().item<double>();
    EXPECT_LT((*lf - *lr).abs().max().item<double>() / scale, tolerance) << model << " " << dtype;
    EXPECT_TRUE(at::equal(lf->argmax(-1), lr->argmax(-1)) || dtype != "f32");
  }
  // Random-weight attention is peaked, so summation-order differences in the
  // scores move individual probabilities by up to ~1e-3 (measured); a wrong
  // slot or head would move them by the whole probability.
  for (int64_t l = 0; l < reference->config().num_layers; ++l) {
    const at::Tensor sf = cf.AttentionSum(l), sr = cr.AttentionSum(l);
    EXPECT_LT((sf - sr).abs().max().item<double>() / sr.abs().max().item<double>(),
              dtype == "f32" ? 1e-2 : tolerance)
        << model << " " << dtype << " layer " << l;
    EXPECT_NEAR(sf.sum().item<double>(), sr.sum().item<double>(), 0.05) << "layer " << l;
    EXPECT_TRUE(at::equal(cf.AttentionCount(l), cr.AttentionCount(l))) << "layer " << l;
  }
}

TEST(CpuPrefillTest, LoopsMatchTheLibtorchOps) {
  PrefillBoth("tiny-llama", "f32", 1e-5);
  PrefillBoth("tiny-qwen2", "f32", 1e-5);  // GQA, qkv bias
  PrefillBoth("tiny-qwen3", "f32", 1e-5);  // per-head q/k norm
  PrefillBoth("tiny-qwen2", "bf16", 0.08);
}

// A paged cache whose blocks are scattered: the prefill reads several spans.
TEST(CpuPrefillTest, ScatteredBlocksGiveTheSameLogits) {
  auto fused = Load("tiny-llama", "f32", true);
  auto reference = Load("tiny-llama", "f32", false);
  const KvCacheOptions o = fused->CacheOptions();
  const LayerShape shape{.kv_heads = o.num_kv_heads, .head_dim = o.head_dim, .dtype = o.dtype};
  auto arena = NewKvArena(shape, 4096 * TokenBytes(shape), 4);
  ASSERT_TRUE(arena.ok()) << arena.status();
  KvCacheOptions paged = o;
  paged.arena = *arena;
  SequenceKvCache a(paged), b(paged), r(reference->CacheOptions());
  for (int s = 0; s < 3; ++s) {  // interleave: b's blocks are not consecutive
    for (SequenceKvCache* cache : {&a, &b}) {
      ForwardItem item{.cache = cache, .tokens = {3, 4, 5, 6, 7}};
      ASSERT_TRUE(fused->Forward({&item, 1}).ok());
    }
    ForwardItem item{.cache = &r, .tokens = {3, 4, 5, 6, 7}};
    ASSERT_TRUE(reference->Forward({&item, 1}).ok());
  }
  std::vector<KvSpan> spans;
  ASSERT_TRUE(b.AttentionSpans(0, spans));
  EXPECT_GT(spans.size(), 1u);
  ForwardItem fb{.cache = &b, .tokens = {9, 10, 11, 12, 13, 14}, .all_logits = true};
  ForwardItem fr{.cache = &r, .tokens = {9, 10, 11, 12, 13, 14}, .all_logits = true};
  auto lf = fused->Forward({&fb, 1});
  auto lr = reference->Forward({&fr, 1});
  ASSERT_TRUE(lf.ok() && lr.ok());
  EXPECT_LT((*lf - *lr).abs().max().item<double>() / lr->abs().max().item<double>(), 1e-5);
}

// What the loops do not cover falls back to the libtorch ops: prefill rows,
// query moments and question spans for compressors, packed (KIVI) layers.
TEST(CpuDecodeBatchTest, FallsBackWhereTheLoopsDoNotApply) {
  auto model = Load("tiny-llama", "f32", true);
  SequenceKvCache plain(model->CacheOptions());
  ForwardItem prefill{.cache = &plain, .tokens = {1, 2, 3}};
  EXPECT_FALSE(model->DecodesOnCpu({&prefill, 1}));
  ASSERT_TRUE(model->Forward({&prefill, 1}).ok());
  ForwardItem step{.cache = &plain, .tokens = {4}};
  EXPECT_TRUE(model->DecodesOnCpu({&step, 1}));

  SequenceKvCache watched(model->CacheOptions(0, {.query_moments = true}));
  ForwardItem watched_step{.cache = &watched, .tokens = {4}};
  EXPECT_FALSE(model->DecodesOnCpu({&watched_step, 1}));

  KvCacheOptions kivi = model->CacheOptions();
  kivi.quantize = true;
  kivi.kivi = {.spec = {.bits = 4, .group_size = 4}, .residual = 8};
  SequenceKvCache packed(kivi);
  ForwardItem packed_step{.cache = &packed, .tokens = {4}};
  EXPECT_FALSE(model->DecodesOnCpu({&packed_step, 1}));
}

}  // namespace
}  // namespace kvguard::engine
