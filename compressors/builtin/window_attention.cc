#include "compressors/builtin/window_attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvguard::compress {
namespace {

// Two libtorch ops (the logits' matmul, the softmax) around one loop that
// scales and masks in place. On CPU a compression step runs on the
// scheduler's thread for one sequence at a time, where the tensor path's ~8
// small ops cost more than their arithmetic.
at::Tensor WindowAttentionOnCpu(const at::Tensor& queries,
                                const std::vector<int32_t>& query_positions, const at::Tensor& keys,
                                const std::vector<std::vector<int32_t>>& key_positions) {
  const int64_t heads = queries.size(0), w = queries.size(1), hd = queries.size(2);
  const int64_t hkv = keys.size(0), total = keys.size(1), group = heads / hkv;
  const at::Tensor q = queries.to(at::kFloat).reshape({hkv, group * w, hd});
  at::Tensor logits = at::matmul(q, keys.to(at::kFloat).transpose(1, 2)).contiguous();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* row = logits.data_ptr<float>();
  for (int64_t h = 0; h < hkv; ++h) {
    const int32_t* pos = key_positions[h].data();
    for (int64_t r = 0; r < group * w; ++r, row += total) {
      const int32_t query = query_positions[r % w];
      for (int64_t j = 0; j < total; ++j)
        row[j] = pos[j] > query ? -std::numeric_limits<float>::infinity() : row[j] * scale;
    }
  }
  return at::softmax(logits.view({hkv, group, w, total}), -1);
}

at::Tensor SnapKvScoresLoops(const at::Tensor& attention, int64_t window_slots,
                             int64_t kernel_size) {
  const at::Tensor a = attention.contiguous();
  const int64_t hkv = a.size(0), group = a.size(1), w = a.size(2), total = a.size(3);
  const int64_t body = total - window_slots, half = kernel_size / 2;
  at::Tensor out = at::empty({hkv, total}, a.options());
  const float* ad = a.data_ptr<float>();
  float* od = out.data_ptr<float>();
  std::vector<float> mean(static_cast<size_t>(body));
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t h = 0; h < hkv; ++h) {
    float* scores = od + h * total;
    std::fill(scores, scores + body, 0.0f);
    for (int64_t g = 0; g < group; ++g) {
      // Mean of the window's attention, then the zero-padded average pool.
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (int64_t i = 0; i < w; ++i) {
        const float* row = ad + ((h * group + g) * w + i) * total;
        for (int64_t j = 0; j < body; ++j) mean[j] += row[j];
      }
      for (int64_t j = 0; j < body; ++j) mean[j] /= static_cast<float>(w);
      for (int64_t j = 0; j < body; ++j) {
        float pooled = 0.0f;
        for (int64_t t = std::max<int64_t>(0, j - half); t <= std::min(body - 1, j + half); ++t)
          pooled += mean[t];
        scores[j] += pooled / static_cast<float>(kernel_size);
      }
    }
    for (int64_t j = 0; j < body; ++j) {
      scores[j] /= static_cast<float>(group);
      top = std::max(top, scores[j]);
    }
  }
  const float window_score = body > 0 ? top + 1.0f : 1.0f;
  for (int64_t h = 0; h < hkv; ++h)
    std::fill(od + h * total + body, od + (h + 1) * total, window_score);
  return out;
}

}  // namespace

at::Tensor WindowAttention(const at::Tensor& queries, const std::vector<int32_t>& query_positions,
                           const at::Tensor& keys,
                           const std::vector<std::vector<int32_t>>& key_positions) {
  if (queries.device().is_cpu() && keys.device().is_cpu())
    return WindowAttentionOnCpu(queries, query_positions, keys, key_positions);
  const int64_t heads = queries.size(0), w = queries.size(1), hd = queries.size(2);
  const int64_t hkv = keys.size(0), total = keys.size(1), group = heads / hkv;
  at::Tensor q = queries.to(at::kFloat).view({hkv, group * w, hd});
  at::Tensor k = keys.to(q.device(), at::kFloat);
  at::Tensor scores = at::matmul(q, k.transpose(1, 2)).div_(std::sqrt(double(hd)));
  // mask[h][i][j] = key j of head h is after query i.
  std::vector<uint8_t> mask(hkv * w * total);
  for (int64_t h = 0; h < hkv; ++h)
    for (int64_t i = 0; i < w; ++i)
      for (int64_t j = 0; j < total; ++j)
        mask[(h * w + i) * total + j] = key_positions[h][j] > query_positions[i];
  at::Tensor m =
      at::from_blob(mask.data(), {hkv, 1, w, total}, at::kByte).to(q.device(), at::kBool);
  scores = scores.view({hkv, group, w, total}).masked_fill(m, -INFINITY);
  return at::softmax(scores, -1);
}

int64_t TrailingSlotsFrom(const std::vector<std::vector<int32_t>>& key_positions,
                          int32_t first_position) {
  const auto& p = key_positions[0];
  int64_t n = 0;
  while (n < static_cast<int64_t>(p.size()) && p[p.size() - 1 - n] >= first_position) ++n;
  return n;
}

at::Tensor SnapKvScores(const at::Tensor& attention, int64_t window_slots, int64_t kernel_size) {
  if (attention.device().is_cpu() && attention.scalar_type() == at::kFloat)
    return SnapKvScoresLoops(attention, window_slots, kernel_size);
  const int64_t hkv = attention.size(0), group = attention.size(1), total = attention.size(3);
  const int64_t body = total - window_slots;
  at::Tensor mean = attention.narrow(3, 0, body).mean(2);  // [hkv, group, body]
  at::Tensor pooled = at::avg_pool1d(mean.reshape({hkv * group, 1, body}), {kernel_size}, {1},
                                     {kernel_size / 2}, false, /*count_include_pad=*/true);
  at::Tensor scores = pooled.view({hkv, group, body}).mean(1);
  const double top = scores.numel() > 0 ? scores.max().item<double>() + 1 : 1.0;
  return at::cat({scores, at::full({hkv, window_slots}, top, scores.options())}, 1);
}

}  // namespace kvguard::compress
