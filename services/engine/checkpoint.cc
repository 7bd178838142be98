#include "services/engine/checkpoint.h"

#include <cstring>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace kvguard::engine {
namespace {

class SafetensorsWeights final : public WeightSource {
 public:
  explicit SafetensorsWeights(std::unique_ptr<SafetensorsCheckpoint> ckpt)
      : ckpt_(std::move(ckpt)) {}
  const TensorView* Find(const std::string& name) const override { return ckpt_->Find(name); }

 private:
  std::unique_ptr<SafetensorsCheckpoint> ckpt_;
};

// Views into a mapped llama2.c file, named as the equivalent HF tensors.
class Llama2cWeights final : public WeightSource {
 public:
  explicit Llama2cWeights(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}
  const TensorView* Find(const std::string& name) const override {
    auto it = views_.find(name);
    return it == views_.end() ? nullptr : &it->second;
  }
  // Carves the next tensor of `shape` out of the file; false when it runs past EOF.
  bool Take(const std::string& name, std::vector<int64_t> shape, size_t& offset) {
    TensorView v;
    v.name = name;
    v.dtype = DType::kF32;
    v.shape = std::move(shape);
    v.nbytes = static_cast<size_t>(v.numel()) * 4;
    if (offset > file_->size() || v.nbytes > file_->size() - offset) return false;
    v.data = file_->data() + offset;
    offset += v.nbytes;
    views_[name] = std::move(v);
    return true;
  }
  size_t file_size() const { return file_->size(); }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, TensorView> views_;
};

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

absl::StatusOr<ModelConfig> ConfigFromLlama2cHeader(const Llama2cHeader& h,
                                                    const std::string& path) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad llama2.c header: ", what));
  };
  // Negative = unshared classifier. INT32_MIN has no positive counterpart (found by fuzz_llama2c).
  if (h.vocab_size == std::numeric_limits<int32_t>::min()) return bad("vocab_size out of range");
  const int32_t vocab = h.vocab_size < 0 ? -h.vocab_size : h.vocab_size;
  constexpr int32_t kMax = 1 << 20;
  for (int32_t v : {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, vocab, h.seq_len}) {
    if (v <= 0 || v > kMax) return bad("sizes must be positive and below 2^20");
  }
  if (h.dim % h.n_heads != 0) return bad("dim not divisible by n_heads");
  if (h.n_heads % h.n_kv_heads != 0) return bad("n_heads not a multiple of n_kv_heads");
  ModelConfig c;
  c.family = "llama";
  c.vocab_size = vocab;
  c.hidden_size = h.dim;
  c.intermediate_size = h.hidden_dim;
  c.num_layers = h.n_layers;
  c.num_heads = h.n_heads;
  c.num_kv_heads = h.n_kv_heads;
  c.head_dim = h.dim / h.n_heads;
  if (c.head_dim % 2 != 0) return bad("head size must be even");
  c.max_position_embeddings = h.seq_len;
  c.rms_norm_eps = 1e-5;  // run.c's rmsnorm
  c.rope.theta = 10000.0;
  c.rope.interleaved_pairs = true;
  c.tie_word_embeddings = h.vocab_size > 0;
  c.bos_token_id = 1;
  c.eos_token_ids = {1, 2};  // run.c ends a story at BOS; EOS is 2
  return c;
}

// Lays out the weight views in llama2.c's file order.
bool CarveLlama2cWeights(const ModelConfig& c, bool shared_classifier, Llama2cWeights& w) {
  size_t off = sizeof(Llama2cHeader);
  const int64_t d = c.hidden_size, hd = c.head_dim, kv = c.num_kv_heads * hd;
  const int64_t L = c.num_layers, f = c.intermediate_size;
  auto per_layer = [&](const std::string& suffix, std::vector<int64_t> shape) {
    for (int64_t l = 0; l < L; ++l) {
      if (!w.Take(absl::StrCat("model.layers.", l, ".", suffix), shape, off)) return false;
    }
    return true;
  };
  bool ok = w.Take("model.embed_tokens.weight", {c.vocab_size, d}, off) &&
            per_layer("input_layernorm.weight", {d}) &&
            per_layer("self_attn.q_proj.weight", {c.num_heads * hd, d}) &&
            per_layer("self_attn.k_proj.weight", {kv, d}) &&
            per_layer("self_attn.v_proj.weight", {kv, d}) &&
            per_layer("self_attn.o_proj.weight", {d, c.num_heads * hd}) &&
            per_layer("post_attention_layernorm.weight", {d}) &&
            per_layer("mlp.gate_proj.weight", {f, d}) &&
            per_layer("mlp.down_proj.weight", {d, f}) &&
            per_layer("mlp.up_proj.weight", {f, d}) && w.Take("model.norm.weight", {d}, off);
  if (!ok) return false;
  // freq_cis_real and freq_cis_imag: run.c's precomputed RoPE tables, unused.
  off += static_cast<size_t>(c.max_position_embeddings * hd / 2) * 4 * 2;
  if (shared_classifier) return off <= w.file_size();
  return w.Take("lm_head.weight", {c.vocab_size, d}, off);
}

absl::StatusOr<Checkpoint> OpenHfCheckpoint(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  if (!FileExists(config_path)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no config.json (not a checkpoint directory)"));
  }
  KVG_ASSIGN_OR_RETURN(std::string config_text, ReadFileToString(config_path));
  Checkpoint ckpt;
  ckpt.format = "hf";
  auto config = ParseHfConfig(config_text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(dir, "/", config.status().message()));
  }
  ckpt.config = std::move(config).value();
  if (FileExists(dir + "/generation_config.json")) {
    KVG_ASSIGN_OR_RETURN(std::string gen_text, ReadFileToString(dir + "/generation_config.json"));
    KVG_RETURN_IF_ERROR(MergeGenerationConfig(gen_text, ckpt.config));
  }
  KVG_ASSIGN_OR_RETURN(auto st, SafetensorsCheckpoint::OpenDir(dir));
  ckpt.weights = std::make_unique<SafetensorsWeights>(std::move(st));
  if (FileExists(dir + "/tokenizer.json")) ckpt.tokenizer_path = dir + "/tokenizer.json";
  return ckpt;
}

}  // namespace

absl::StatusOr<Checkpoint> OpenLlama2cCheckpoint(const std::string& path) {
  KVG_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  if (file->size() < sizeof(Llama2cHeader)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": too short for a llama2.c header"));
  }
  Llama2cHeader h;
  std::memcpy(&h, file->data(), sizeof(h));
  Checkpoint ckpt;
  ckpt.format = "llama2c";
  KVG_ASSIGN_OR_RETURN(ckpt.config, ConfigFromLlama2cHeader(h, path));
  auto weights = std::make_unique<Llama2cWeights>(std::move(file));
  if (!CarveLlama2cWeights(ckpt.config, h.vocab_size > 0, *weights)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is shorter than its llama2.c header implies (truncated?)"));
  }
  ckpt.weights = std::move(weights);
  return ckpt;
}

absl::StatusOr<Checkpoint> OpenCheckpoint(const std::string& path) {
  if (IsDirectory(path)) return OpenHfCheckpoint(path);
  if (FileExists(path)) {
    if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".bin") == 0) {
      return OpenLlama2cCheckpoint(path);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a checkpoint directory or a llama2.c .bin file"));
  }
  return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
}

}  // namespace kvguard::engine
