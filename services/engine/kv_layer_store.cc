#include "services/engine/kv_layer_store.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvguard::engine {
namespace {

int64_t ElementBytes(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

// dst[:, first : first + n] = src ([kv_heads, n, head_dim]). On CPU a memcpy
// per head: a decode step appends one token to every layer, and narrow() +
// copy_() cost ~9 us of op dispatch per layer on a 0.5B model (~1% of a step).
void CopyRows(const at::Tensor& dst, int64_t first, const at::Tensor& src) {
  const int64_t n = src.size(1);
  if (!dst.device().is_cpu() || !src.device().is_cpu() || !dst.is_contiguous() ||
      !src.is_contiguous() || src.scalar_type() != dst.scalar_type()) {
    dst.narrow(1, first, n).copy_(src);
    return;
  }
  const int64_t row = dst.size(2) * ElementBytes(dst.scalar_type());
  const int64_t heads = dst.size(0), capacity = dst.size(1);
  auto* out = static_cast<char*>(dst.data_ptr());
  const auto* in = static_cast<const char*>(src.data_ptr());
  for (int64_t h = 0; h < heads; ++h)
    std::memcpy(out + (h * capacity + first) * row, in + h * n * row, n * row);
}

class DenseLayerStore final : public LayerStore {
 public:
  DenseLayerStore(const LayerShape& shape, int64_t reserve) : shape_(shape) {
    if (reserve > 0) Grow(reserve);
  }

  void Append(const at::Tensor& k, const at::Tensor& v) override {
    const int64_t n = k.size(1);
    Grow(size_ + n);
    CopyRows(keys_, size_, k);
    CopyRows(values_, size_, v);
    size_ += n;
  }
  at::Tensor Keys() const override { return View(keys_); }
  at::Tensor Values() const override { return View(values_); }
  int64_t size() const override { return size_; }
  bool Spans(std::vector<KvSpan>& out) const override {
    if (size_ > 0) out.push_back({keys_.data_ptr(), values_.data_ptr(), size_, capacity()});
    return true;
  }

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

// Dense entries in blocks of the shared arena. Slot s lives in block
// blocks_[s / T] at row s % T (T = block_tokens). Reads are views of the
// arena when the blocks are consecutive (the pool hands out successors when
// it can), a gather otherwise.
class PagedLayerStore final : public LayerStore {
 public:
  explicit PagedLayerStore(std::shared_ptr<KvArena> arena)
      : arena_(std::move(arena)), pool_(*arena_->pool), shape_(arena_->shape) {}
  ~PagedLayerStore() override { pool_.Free(blocks_); }

  void Append(const at::Tensor& k, const at::Tensor& v) override {
    const int64_t n = k.size(1);
    Reserve(size_ + n);
    Write(size_, k, v);
    size_ += n;
  }
  at::Tensor Keys() const override { return swapped_ ? host_k_ : Read(arena_->keys); }
  at::Tensor Values() const override { return swapped_ ? host_v_ : Read(arena_->values); }
  int64_t size() const override { return size_; }
  bool Spans(std::vector<KvSpan>& out) const override {
    if (size_ == 0) return true;
    if (swapped_) {
      if (!host_k_.is_contiguous() || !host_v_.is_contiguous()) return false;
      out.push_back({host_k_.data_ptr(), host_v_.data_ptr(), size_, size_});
      return true;
    }
    // One span per run of consecutive blocks.
    const int64_t t = pool_.block_tokens(), stride = arena_->keys.size(1);
    const int64_t row_bytes = shape_.head_dim * ElementBytes(shape_.dtype);
    const char* keys = static_cast<const char*>(arena_->keys.data_ptr());
    const char* values = static_cast<const char*>(arena_->values.data_ptr());
    for (int64_t s = 0; s < size_;) {
      const int64_t first = ArenaRow(s);
      int64_t n = std::min(t - s % t, size_ - s);
      while (s + n < size_ && blocks_[(s + n) / t] == blocks_[(s + n) / t - 1] + 1)
        n += std::min(t, size_ - s - n);
      out.push_back({keys + first * row_bytes, values + first * row_bytes, n, stride});
      s += n;
    }
    return true;
  }

  void Gather(const at::Tensor& index) override {
    const int64_t n = index.size(1);
    if (!swapped_ && CompactInPlace(index)) {
      ReleaseBlocksPast(n);
      size_ = n;
      return;
    }
    at::Tensor idx = index.unsqueeze(-1).expand({shape_.kv_heads, n, shape_.head_dim});
    at::Tensor k = at::gather(Keys(), 1, idx), v = at::gather(Values(), 1, idx);
    if (swapped_) {
      host_k_ = k;
      host_v_ = v;
      size_ = n;
      return;
    }
    ReleaseBlocksPast(n);
    Write(0, k, v);
    size_ = n;
  }
  int64_t Bytes() const override { return size_ * TokenBytes(shape_); }
  int64_t AllocatedBytes() const override {
    return static_cast<int64_t>(blocks_.size()) * pool_.block_bytes();
  }

  int64_t BlocksToAppend(int64_t n) const override {
    return std::max<int64_t>(0, pool_.BlocksForTokens(size_ + n) - BlocksHeld());
  }
  int64_t BlocksHeld() const override { return static_cast<int64_t>(blocks_.size()); }
  void SwapOut() override {
    if (swapped_) return;
    host_k_ = Keys().clone();
    host_v_ = Values().clone();
    pool_.Free(blocks_);
    blocks_.clear();
    swapped_ = true;
  }
  absl::Status SwapIn() override {
    if (!swapped_) return absl::OkStatus();
    auto ids = pool_.Allocate(pool_.BlocksForTokens(size_));
    if (!ids.ok()) return ids.status();
    blocks_ = std::move(*ids);
    swapped_ = false;
    Write(0, host_k_, host_v_);
    host_k_ = at::Tensor();
    host_v_ = at::Tensor();
    return absl::OkStatus();
  }

 private:
  // The scheduler reserves blocks before every step (BlocksToAppend), so a
  // short pool here is a scheduler bug, not an input error.
  void Reserve(int64_t tokens) {
    KVG_CHECK(!swapped_) << "append to a swapped-out layer store";
    const int64_t need = pool_.BlocksForTokens(tokens) - BlocksHeld();
    if (need <= 0) return;
    auto ids = pool_.Allocate(need, blocks_.empty() ? -1 : blocks_.back());
    KVG_CHECK(ids.ok()) << ids.status();
    blocks_.insert(blocks_.end(), ids->begin(), ids->end());
  }
  // The arena row (within a head) that holds slot s.
  int64_t ArenaRow(int64_t s) const {
    const int64_t t = pool_.block_tokens();
    return blocks_[s / t] * t + s % t;
  }
  // Whole blocks past the first n entries go back to the pool at once.
  void ReleaseBlocksPast(int64_t n) {
    const int64_t keep = pool_.BlocksForTokens(n);
    pool_.Free(std::span<const int32_t>(blocks_).subspan(static_cast<size_t>(keep)));
    blocks_.resize(static_cast<size_t>(keep));
  }
  // On CPU, an eviction whose kept slots ascend in every head (what the
  // scoring compressors plan) moves each kept row down to its new slot by
  // memcpy: slot i is written only after every slot it could be read from.
  // Two tensor gathers and a scatter cost ~10x this on the decode thread.
  bool CompactInPlace(const at::Tensor& index) {
    if (!arena_->keys.device().is_cpu() || !arena_->keys.is_contiguous() ||
        !arena_->values.is_contiguous() || index.scalar_type() != at::kLong ||
        !index.is_contiguous() || !index.device().is_cpu()) {
      return false;
    }
    const int64_t heads = index.size(0), n = index.size(1);
    const int64_t* slots = index.data_ptr<int64_t>();
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t s = slots[h * n + i];
        if (s < i || s >= size_ || (i > 0 && s <= slots[h * n + i - 1])) return false;
      }
    }
    const int64_t arena_rows = arena_->keys.size(1);
    const int64_t row_bytes = shape_.head_dim * ElementBytes(shape_.dtype);
    char* keys = static_cast<char*>(arena_->keys.data_ptr());
    char* values = static_cast<char*>(arena_->values.data_ptr());
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t s = slots[h * n + i];
        if (s == i) continue;
        const int64_t from = (h * arena_rows + ArenaRow(s)) * row_bytes;
        const int64_t to = (h * arena_rows + ArenaRow(i)) * row_bytes;
        std::memcpy(keys + to, keys + from, static_cast<size_t>(row_bytes));
        std::memcpy(values + to, values + from, static_cast<size_t>(row_bytes));
      }
    }
    return true;
  }
  // Arena rows of slots [from, from + n): a first row when they are
  // consecutive, else -1 and `rows` filled.
  int64_t Rows(int64_t from, int64_t n, std::vector<int64_t>& rows) const {
    const int64_t t = pool_.block_tokens();
    const int64_t first = ArenaRow(from);
    bool consecutive = true;
    for (int64_t b = from / t + 1; b <= (from + n - 1) / t && consecutive; ++b) {
      consecutive = blocks_[b] == blocks_[b - 1] + 1;
    }
    if (consecutive) return first;
    rows.reserve(static_cast<size_t>(n));
    for (int64_t s = from; s < from + n; ++s) rows.push_back(ArenaRow(s));
    return -1;
  }
  at::Tensor Read(const at::Tensor& arena) const {
    if (size_ == 0) return arena.narrow(1, 0, 0);
    std::vector<int64_t> rows;
    const int64_t first = Rows(0, size_, rows);
    if (first >= 0) return arena.narrow(1, first, size_);
    return arena.index_select(1, at::tensor(rows, at::kLong).to(arena.device()));
  }
  void Write(int64_t from, const at::Tensor& k, const at::Tensor& v) {
    const int64_t n = k.size(1);
    if (n == 0) return;
    std::vector<int64_t> rows;
    const int64_t first = Rows(from, n, rows);
    if (first >= 0) {
      CopyRows(arena_->keys, first, k);
      CopyRows(arena_->values, first, v);
      return;
    }
    at::Tensor index = at::tensor(rows, at::kLong).to(arena_->keys.device());
    arena_->keys.index_copy_(1, index, k.to(shape_.dtype));
    arena_->values.index_copy_(1, index, v.to(shape_.dtype));
  }

  std::shared_ptr<KvArena> arena_;
  KvBlockPool& pool_;
  LayerShape shape_;
  std::vector<int32_t> blocks_;
  int64_t size_ = 0;
  bool swapped_ = false;
  at::Tensor host_k_, host_v_;  // while swapped out
};

// A store with its own tensors (KIVI), charged to the pool in whole blocks
// of its bytes so packed and dense layers share one budget.
class PoolChargedStore final : public LayerStore {
 public:
  PoolChargedStore(std::unique_ptr<LayerStore> inner, std::shared_ptr<KvBlockPool> pool,
                   int64_t token_bytes)
      : inner_(std::move(inner)), pool_(std::move(pool)), token_bytes_(token_bytes) {}
  ~PoolChargedStore() override { pool_->Free(charged_); }

  void Append(const at::Tensor& k, const at::Tensor& v) override {
    inner_->Append(k, v);
    Settle();
  }
  at::Tensor Keys() const override { return inner_->Keys(); }
  at::Tensor Values() const override { return inner_->Values(); }
  int64_t size() const override { return inner_->size(); }
  bool Spans(std::vector<KvSpan>& out) const override { return inner_->Spans(out); }
  void Gather(const at::Tensor& index) override {
    inner_->Gather(index);
    Settle();
  }
  int64_t Bytes() const override { return inner_->Bytes(); }
  int64_t AllocatedBytes() const override { return inner_->AllocatedBytes(); }
  // Upper bound: new tokens counted at full precision until they are packed.
  int64_t BlocksToAppend(int64_t n) const override {
    return std::max<int64_t>(0, Blocks(inner_->AllocatedBytes() + n * token_bytes_) - BlocksHeld());
  }
  int64_t BlocksHeld() const override { return static_cast<int64_t>(charged_.size()); }
  void SwapOut() override {
    pool_->Free(charged_);
    charged_.clear();
    swapped_ = true;
  }
  absl::Status SwapIn() override {
    if (!swapped_) return absl::OkStatus();
    auto ids = pool_->Allocate(Blocks(inner_->AllocatedBytes()));
    if (!ids.ok()) return ids.status();
    charged_ = std::move(*ids);
    swapped_ = false;
    return absl::OkStatus();
  }

 private:
  int64_t Blocks(int64_t bytes) const {
    return (bytes + pool_->block_bytes() - 1) / pool_->block_bytes();
  }
  void Settle() {
    if (swapped_) return;
    const int64_t want = Blocks(inner_->AllocatedBytes());
    if (want > BlocksHeld()) {
      auto ids = pool_->Allocate(want - BlocksHeld());
      KVG_CHECK(ids.ok()) << ids.status();  // reserved by the scheduler (BlocksToAppend)
      charged_.insert(charged_.end(), ids->begin(), ids->end());
    } else if (want < BlocksHeld()) {
      pool_->Free(std::span<const int32_t>(charged_).subspan(static_cast<size_t>(want)));
      charged_.resize(static_cast<size_t>(want));
    }
  }

  std::unique_ptr<LayerStore> inner_;
  std::shared_ptr<KvBlockPool> pool_;
  int64_t token_bytes_;
  std::vector<int32_t> charged_;
  bool swapped_ = false;
};

}  // namespace

int64_t TokenBytes(const LayerShape& shape) {
  return 2 * shape.kv_heads * shape.head_dim * ElementBytes(shape.dtype);
}

absl::StatusOr<std::shared_ptr<KvArena>> NewKvArena(const LayerShape& shape, int64_t total_bytes,
                                                    int64_t block_tokens) {
  if (block_tokens <= 0)
    return absl::InvalidArgumentError("KV pool: block_tokens must be positive");
  const int64_t block_bytes = block_tokens * TokenBytes(shape);
  const int64_t blocks = total_bytes / block_bytes;
  if (blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV pool of ", total_bytes,
                                                   " bytes holds no block (one block is ",
                                                   block_bytes, " bytes)"));
  }
  auto pool = KvBlockPool::Create(
      {.total_blocks = blocks, .block_tokens = block_tokens, .block_bytes = block_bytes});
  if (!pool.ok()) return pool.status();
  auto arena = std::make_shared<KvArena>();
  arena->pool = std::move(*pool);
  arena->shape = shape;
  arena->keys = at::empty({shape.kv_heads, blocks * block_tokens, shape.head_dim},
                          at::TensorOptions().dtype(shape.dtype).device(shape.device));
  arena->values = at::empty_like(arena->keys);
  return arena;
}

std::unique_ptr<LayerStore> NewPagedLayerStore(std::shared_ptr<KvArena> arena) {
  return std::make_unique<PagedLayerStore>(std::move(arena));
}

std::unique_ptr<LayerStore> NewPoolChargedStore(std::unique_ptr<LayerStore> inner,
                                                std::shared_ptr<KvBlockPool> pool) {
  const int64_t token_bytes = pool->block_bytes() / pool->block_tokens();
  return std::make_unique<PoolChargedStore>(std::move(inner), std::move(pool), token_bytes);
}

std::unique_ptr<LayerStore> NewDenseLayerStore(const LayerShape& shape, int64_t reserve) {
  return std::make_unique<DenseLayerStore>(shape, reserve);
}

std::unique_ptr<LayerStore> NewQuantizedLayerStore(const LayerShape& shape,
                                                   const KiviOptions& kivi) {
  return std::make_unique<QuantizedLayerStore>(shape, kivi);
}

}  // namespace kvguard::engine
