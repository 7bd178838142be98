// `kvguard random-checkpoint`: a random-weight Hugging Face checkpoint
// (config.json + model.safetensors) of a published model shape, for speed
// measurements only: `kvguard bench` and the llama.cpp peer run on the same
// weights. Weights ~ N(0, 0.02), norms 1; bf16 keeps the top half of f32.
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/svg_plot.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"
#include "services/engine/safetensors_writer.h"

namespace kvguard::cli {
namespace {

struct Shape {
  std::string model_type;
  int64_t hidden, intermediate, layers, heads, kv_heads, vocab;
  bool tied, qkv_bias;
};

const std::map<std::string, Shape>& Shapes() {
  static const auto* shapes = new std::map<std::string, Shape>{
      {"qwen2.5-0.5b", {"qwen2", 896, 4864, 24, 14, 2, 151936, true, true}},
      {"qwen2.5-1.5b", {"qwen2", 1536, 8960, 28, 12, 2, 151936, true, true}},
      {"qwen2.5-7b", {"qwen2", 3584, 18944, 28, 28, 4, 152064, false, true}},
      {"llama-tiny110m", {"llama", 768, 2048, 12, 12, 12, 32000, false, false}},
  };
  return *shapes;
}

engine::TensorData RandomTensor(std::vector<int64_t> shape, bool ones, bool bf16,
                                std::mt19937_64& rng) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  engine::TensorData t{.dtype = bf16 ? engine::DType::kBF16 : engine::DType::kF32,
                       .shape = std::move(shape)};
  t.bytes.resize(static_cast<size_t>(n) * (bf16 ? 2 : 4));
  std::normal_distribution<float> normal(0.0f, 0.02f);
  char* out = t.bytes.data();
  for (int64_t i = 0; i < n; ++i) {
    const float v = ones ? 1.0f : normal(rng);
    const uint32_t bits = std::bit_cast<uint32_t>(v);
    if (bf16) {
      const uint16_t hi = static_cast<uint16_t>(bits >> 16);
      std::memcpy(out + 2 * i, &hi, 2);
    } else {
      std::memcpy(out + 4 * i, &bits, 4);
    }
  }
  return t;
}

}  // namespace

absl::Status RunRandomCheckpoint(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv, {"shape", "dtype", "out", "seed"}, {}));
  KVG_ASSIGN_OR_RETURN(std::string out, args.Require("out"));
  const std::string shape_name = args.Get("shape", "qwen2.5-0.5b");
  auto it = Shapes().find(shape_name);
  if (it == Shapes().end()) {
    std::vector<std::string> names;
    for (const auto& [name, _] : Shapes()) names.push_back(name);
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --shape '", shape_name, "' (", absl::StrJoin(names, ", "), ")"));
  }
  const Shape& s = it->second;
  const std::string dtype = args.Get("dtype", "bf16");
  if (dtype != "bf16" && dtype != "f32")
    return absl::InvalidArgumentError("--dtype must be bf16 or f32");
  const bool bf16 = dtype == "bf16";
  KVG_ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  std::mt19937_64 rng(static_cast<uint64_t>(seed));

  const int64_t hd = s.hidden / s.heads, kv = s.kv_heads * hd, q = s.heads * hd;
  std::map<std::string, engine::TensorData> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    const bool ones = name.ends_with("norm.weight");
    tensors[name] = RandomTensor(std::move(shape), ones, bf16, rng);
  };
  add("model.embed_tokens.weight", {s.vocab, s.hidden});
  add("model.norm.weight", {s.hidden});
  if (!s.tied) add("lm_head.weight", {s.vocab, s.hidden});
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "self_attn.q_proj.weight", {q, s.hidden});
    add(p + "self_attn.k_proj.weight", {kv, s.hidden});
    add(p + "self_attn.v_proj.weight", {kv, s.hidden});
    add(p + "self_attn.o_proj.weight", {s.hidden, q});
    add(p + "mlp.gate_proj.weight", {s.intermediate, s.hidden});
    add(p + "mlp.up_proj.weight", {s.intermediate, s.hidden});
    add(p + "mlp.down_proj.weight", {s.hidden, s.intermediate});
    add(p + "input_layernorm.weight", {s.hidden});
    add(p + "post_attention_layernorm.weight", {s.hidden});
    if (s.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    std::cerr << "\rrandom-checkpoint: layer " << l + 1 << "/" << s.layers << std::flush;
  }
  std::cerr << "\n";
  nlohmann::json config = {
      {"architectures", {s.model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", s.model_type},
      {"hidden_size", s.hidden},
      {"intermediate_size", s.intermediate},
      {"num_hidden_layers", s.layers},
      {"num_attention_heads", s.heads},
      {"num_key_value_heads", s.kv_heads},
      {"vocab_size", s.vocab},
      {"tie_word_embeddings", s.tied},
      {"max_position_embeddings", 32768},
      {"rms_norm_eps", 1e-6},
      {"rope_theta", 1000000.0},
      {"hidden_act", "silu"},
      {"torch_dtype", bf16 ? "bfloat16" : "float32"},
      {"bos_token_id", 1},
      {"eos_token_id", 2}};
  std::filesystem::create_directories(out);
  KVG_RETURN_IF_ERROR(WriteTextFile(out + "/config.json", config.dump(1)));
  KVG_RETURN_IF_ERROR(engine::WriteSafetensors(
      out + "/model.safetensors", tensors,
      {{"format", "pt"}, {"kvguard", "random weights, speed tests only"}}));
  int64_t bytes = 0;
  for (const auto& [_, t] : tensors) bytes += static_cast<int64_t>(t.bytes.size());
  std::cout << out << ": " << shape_name << " " << dtype << ", " << bytes / 1e9
            << " GB of weights\n";
  return absl::OkStatus();
}

}  // namespace kvguard::cli
