// The window scorers' CPU loops (WindowAttention, SnapKvScores) against the
// same formulas written as libtorch tensor ops, and TopSlots against the
// prefix of RankSlots' full order.
#include "compressors/builtin/window_attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "compressors/compressor.h"

namespace kvguard::compress {
namespace {

// softmax(q k^T / sqrt(d)) with keys after a query's position masked.
at::Tensor ReferenceAttention(const at::Tensor& queries,
                              const std::vector<int32_t>& query_positions, const at::Tensor& keys,
                              const std::vector<std::vector<int32_t>>& key_positions) {
  const int64_t heads = queries.size(0), w = queries.size(1), hd = queries.size(2);
  const int64_t hkv = keys.size(0), total = keys.size(1), group = heads / hkv;
  at::Tensor q = queries.to(at::kFloat).reshape({hkv, group * w, hd});
  at::Tensor s = at::matmul(q, keys.to(at::kFloat).transpose(1, 2)) / std::sqrt(double(hd));
  s = s.view({hkv, group, w, total}).clone();
  for (int64_t h = 0; h < hkv; ++h)
    for (int64_t i = 0; i < w; ++i)
      for (int64_t j = 0; j < total; ++j)
        if (key_positions[h][j] > query_positions[i])
          s.select(0, h).select(1, i).select(1, j).fill_(-INFINITY);
  return at::softmax(s, -1);
}

at::Tensor ReferenceSnapKv(const at::Tensor& attention, int64_t window_slots, int64_t kernel) {
  const int64_t hkv = attention.size(0), group = attention.size(1), total = attention.size(3);
  const int64_t body = total - window_slots;
  at::Tensor mean = attention.narrow(3, 0, body).mean(2);
  at::Tensor pooled = at::avg_pool1d(mean.reshape({hkv * group, 1, body}), {kernel}, {1},
                                     {kernel / 2}, false, true);
  at::Tensor scores = pooled.view({hkv, group, body}).mean(1);
  const double top = scores.max().item<double>() + 1;
  return at::cat({scores, at::full({hkv, window_slots}, top, scores.options())}, 1);
}

TEST(WindowAttentionTest, LoopsMatchTensorOpsOnStridedKeysAndEvictedSlots) {
  at::manual_seed(7);
  const int64_t hkv = 2, group = 3, w = 5, hd = 16, total = 40;
  // Keys as a view into a larger buffer (the KV pool's layout), with
  // positions that have gaps (evicted slots), differing per head.
  at::Tensor pool = at::randn({hkv, 64, hd});
  at::Tensor keys = pool.narrow(1, 10, total);
  std::vector<std::vector<int32_t>> positions(hkv);
  for (int64_t h = 0; h < hkv; ++h)
    for (int64_t j = 0; j < total; ++j) positions[h].push_back(int32_t(j * 2 + (j > 20 ? h : 0)));
  std::vector<int32_t> query_positions;
  for (int64_t i = 0; i < w; ++i) query_positions.push_back(int32_t(70 + i * 2));
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    at::Tensor queries = at::randn({hkv * group, w, hd}).to(dtype);
    at::Tensor k = keys.to(dtype);
    at::Tensor got = WindowAttention(queries, query_positions, k, positions);
    at::Tensor want = ReferenceAttention(queries, query_positions, k, positions);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-6)) << (got - want).abs().max().item<float>();
    // Masked keys (after a query) get exactly 0.
    EXPECT_EQ(got.select(0, 0).select(1, 0).select(1, total - 1).max().item<float>(), 0.0f);
    for (int64_t kernel : {1, 5, 7}) {
      at::Tensor s = SnapKvScores(got, 4, kernel);
      at::Tensor r = ReferenceSnapKv(got, 4, kernel);
      EXPECT_TRUE(at::allclose(s, r, 1e-5, 1e-7)) << "kernel " << kernel;
    }
  }
}

TEST(WindowAttentionTest, TopSlotsIsTheSortedPrefixOfRankSlots) {
  const int64_t total = 300;
  std::vector<float> row(total);
  std::vector<int32_t> positions(total);
  for (int64_t i = 0; i < total; ++i) {
    row[i] = float((i * 37) % 23) / 7.0f;  // many ties
    positions[i] = int32_t(i * 3);
  }
  row[5] = NAN;
  row[17] = NAN;
  for (const std::set<int32_t>& protect : {std::set<int32_t>{}, std::set<int32_t>{0, 15, 300}}) {
    const std::vector<int64_t> order = RankSlots(row.data(), total, positions, protect);
    for (int64_t n : {1, 10, 77, 150, 299}) {
      std::vector<int64_t> want(order.begin(), order.begin() + n);
      std::sort(want.begin(), want.end());
      EXPECT_EQ(TopSlots(row.data(), total, positions, protect, n), want) << "n " << n;
    }
  }
}

}  // namespace
}  // namespace kvguard::compress
