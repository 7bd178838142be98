#include "compressors/builtin/window_attention.h"

#include <ATen/ATen.h>

#include <cmath>

namespace kvguard::compress {

at::Tensor WindowAttention(const at::Tensor& queries, const std::vector<int32_t>& query_positions,
                           const at::Tensor& keys,
                           const std::vector<std::vector<int32_t>>& key_positions) {
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
  at::Tensor m = at::from_blob(mask.data(), {hkv, 1, w, total}, at::kByte).to(q.device(), at::kBool);
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
