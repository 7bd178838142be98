#include "services/engine/kv_layer_store.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/check.h"

namespace kvguard::engine {
namespace {

int64_t ElementBytes(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

class DenseLayerStore final : public LayerStore {
 public:
  DenseLayerStore(const LayerShape& shape, int64_t reserve) : shape_(shape) {
    if (reserve > 0) Grow(reserve);
  }

  void Append(const at::Tensor& k, const at::Tensor& v) override {
    const int64_t n = k.size(1);
    Grow(size_ + n);
    keys_.narrow(1, size_, n).copy_(k);
    values_.narrow(1, size_, n).copy_(v);
    size_ += n;
  }
  at::Tensor Keys() const override { return View(keys_); }
  at::Tensor Values() const override { return View(values_); }
  int64_t size() const override { return size_; }

  void Gather(const at::Tensor& index) override {
    const int64_t n = index.size(1);
    at::Tensor idx = index.unsqueeze(-1).expand({shape_.kv_heads, n, shape_.head_dim});
    // gather() allocates tight new tensors; the old storage is released.
    keys_ = at::gather(Keys(), 1, idx);
    values_ = at::gather(Values(), 1, idx);
    size_ = n;
  }
  int64_t Bytes() const override { return 2 * size_ * Row(); }
  int64_t AllocatedBytes() const override { return 2 * capacity() * Row(); }

 private:
  int64_t capacity() const { return keys_.defined() ? keys_.size(1) : 0; }
  int64_t Row() const { return shape_.kv_heads * shape_.head_dim * ElementBytes(shape_.dtype); }
  at::Tensor View(const at::Tensor& t) const {
    if (size_ == 0) {
      return at::empty({shape_.kv_heads, 0, shape_.head_dim},
                       at::TensorOptions().dtype(shape_.dtype).device(shape_.device));
    }
    return t.narrow(1, 0, size_);
  }
  void Grow(int64_t needed) {
    if (needed <= capacity()) return;
    const int64_t cap = std::max({needed, 2 * capacity(), int64_t{16}});
    at::Tensor k = at::empty({shape_.kv_heads, cap, shape_.head_dim},
                             at::TensorOptions().dtype(shape_.dtype).device(shape_.device));
    at::Tensor v = at::empty_like(k);
    if (size_ > 0) {
      k.narrow(1, 0, size_).copy_(Keys());
      v.narrow(1, 0, size_).copy_(Values());
    }
    keys_ = std::move(k);
    values_ = std::move(v);
  }

  LayerShape shape_;
  at::Tensor keys_, values_;
  int64_t size_ = 0;
};

class QuantizedLayerStore final : public LayerStore {
 public:
  QuantizedLayerStore(const LayerShape& shape, const KiviOptions& kivi)
      : shape_(shape), kivi_(kivi) {
    k_fp_ = Empty();
    v_fp_ = Empty();
  }

  void Append(const at::Tensor& k, const at::Tensor& v) override {
    k_fp_ = at::cat({k_fp_, k.to(shape_.dtype)}, 1);
    v_fp_ = at::cat({v_fp_, v.to(shape_.dtype)}, 1);
    FlushKeys();
    FlushValues();
  }
  at::Tensor Keys() const override {
    if (k_q_.empty()) return k_fp_;
    return at::cat({Dequantize(k_q_, shape_.dtype), k_fp_}, 1);
  }
  at::Tensor Values() const override {
    if (v_q_.empty()) return v_fp_;
    return at::cat({Dequantize(v_q_, shape_.dtype), v_fp_}, 1);
  }
  int64_t size() const override { return k_q_.tokens() + k_fp_.size(1); }

  void Gather(const at::Tensor& index) override {
    // Per-channel key groups cannot drop single tokens: dequantize, gather,
    // and re-pack (one extra rounding of the kept entries).
    const int64_t n = index.size(1);
    at::Tensor idx = index.unsqueeze(-1).expand({shape_.kv_heads, n, shape_.head_dim});
    at::Tensor k = at::gather(Keys(), 1, idx), v = at::gather(Values(), 1, idx);
    k_q_ = PackedTensor();
    v_q_ = PackedTensor();
    k_fp_ = Empty();
    v_fp_ = Empty();
    Append(k, v);
  }
  int64_t Bytes() const override {
    const int64_t row = shape_.kv_heads * shape_.head_dim * ElementBytes(shape_.dtype);
    return k_q_.Bytes() + v_q_.Bytes() + (k_fp_.size(1) + v_fp_.size(1)) * row;
  }
  int64_t AllocatedBytes() const override { return Bytes(); }

 private:
  at::Tensor Empty() const {
    return at::empty({shape_.kv_heads, 0, shape_.head_dim},
                     at::TensorOptions().dtype(shape_.dtype).device(shape_.device));
  }
  // Keys: quantize whole blocks of R tokens (per-channel groups need full token groups).
  void FlushKeys() {
    const int64_t r = kivi_.residual;
    const int64_t blocks = k_fp_.size(1) / r;
    if (blocks == 0) return;
    auto packed = QuantizeKeys(k_fp_.narrow(1, 0, blocks * r), kivi_.spec);
    KVG_CHECK(packed.ok()) << packed.status();
    auto joined = Concat(k_q_, *packed);
    KVG_CHECK(joined.ok()) << joined.status();
    k_q_ = std::move(*joined);
    k_fp_ = k_fp_.narrow(1, blocks * r, k_fp_.size(1) - blocks * r).clone();
  }
  // Values: keep a sliding window of the R most recent tokens in full precision.
  void FlushValues() {
    const int64_t extra = v_fp_.size(1) - kivi_.residual;
    if (extra <= 0) return;
    auto packed = QuantizeValues(v_fp_.narrow(1, 0, extra), kivi_.spec);
    KVG_CHECK(packed.ok()) << packed.status();
    auto joined = Concat(v_q_, *packed);
    KVG_CHECK(joined.ok()) << joined.status();
    v_q_ = std::move(*joined);
    v_fp_ = v_fp_.narrow(1, extra, kivi_.residual).clone();
  }

  LayerShape shape_;
  KiviOptions kivi_;
  PackedTensor k_q_, v_q_;
  at::Tensor k_fp_, v_fp_;
};

}  // namespace

std::unique_ptr<LayerStore> NewDenseLayerStore(const LayerShape& shape, int64_t reserve) {
  return std::make_unique<DenseLayerStore>(shape, reserve);
}

std::unique_ptr<LayerStore> NewQuantizedLayerStore(const LayerShape& shape, const KiviOptions& kivi) {
  return std::make_unique<QuantizedLayerStore>(shape, kivi);
}

}  // namespace kvguard::engine
