#include "services/engine/model_config.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvguard::engine {
namespace {

using json = nlohmann::json;

absl::Status ConfigError(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", what));
}

absl::StatusOr<int64_t> RequireInt(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    return ConfigError(absl::StrCat("missing or non-integer '", key, "'"));
  }
  int64_t v = it->get<int64_t>();
  if (v <= 0) return ConfigError(absl::StrCat("'", key, "' must be positive"));
  return v;
}

int64_t IntOr(const json& j, const char* key, int64_t fallback) {
  auto it = j.find(key);
  return (it != j.end() && it->is_number_integer()) ? it->get<int64_t>() : fallback;
}

double NumberOr(const json& j, const char* key, double fallback) {
  auto it = j.find(key);
  return (it != j.end() && it->is_number()) ? it->get<double>() : fallback;
}

// eos_token_id may be an int, a list of ints, or null.
std::vector<int32_t> IdList(const json& j, const char* key) {
  std::vector<int32_t> ids;
  auto it = j.find(key);
  if (it == j.end()) return ids;
  if (it->is_number_integer()) ids.push_back(it->get<int32_t>());
  if (it->is_array()) {
    for (const auto& v : *it)
      if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
  }
  return ids;
}

// RoPE settings live at the top level (transformers 4: rope_theta,
// rope_scaling) or under rope_parameters (transformers 5).
absl::Status ParseRope(const json& j, RopeConfig& rope) {
  const json* params = nullptr;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) params = &*it;
  if (auto it = j.find("rope_scaling"); params == nullptr && it != j.end() && it->is_object()) {
    params = &*it;
  }
  rope.theta = NumberOr(j, "rope_theta", 10000.0);
  if (params == nullptr) return absl::OkStatus();
  rope.theta = NumberOr(*params, "rope_theta", rope.theta);
  std::string type = "default";
  if (auto it = params->find("rope_type"); it != params->end() && it->is_string()) {
    type = it->get<std::string>();
  } else if (auto t = params->find("type"); t != params->end() && t->is_string()) {
    type = t->get<std::string>();
  }
  if (type == "default") return absl::OkStatus();
  rope.factor = NumberOr(*params, "factor", 1.0);
  if (type == "linear") {
    rope.scaling = RopeScaling::kLinear;
    return absl::OkStatus();
  }
  if (type == "llama3") {
    rope.scaling = RopeScaling::kLlama3;
    rope.low_freq_factor = NumberOr(*params, "low_freq_factor", 1.0);
    rope.high_freq_factor = NumberOr(*params, "high_freq_factor", 4.0);
    rope.original_max_position = IntOr(*params, "original_max_position_embeddings", 8192);
    return absl::OkStatus();
  }
  return ConfigError(absl::StrCat("unsupported rope_type '", type, "'"));
}

absl::Status ParseFamily(const json& j, ModelConfig& c) {
  auto it = j.find("model_type");
  if (it == j.end() || !it->is_string()) return ConfigError("missing 'model_type'");
  c.family = it->get<std::string>();
  bool attention_bias = j.value("attention_bias", false);
  if (c.family == "llama" || c.family == "mistral") {
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
  } else if (c.family == "qwen2") {
    c.qkv_bias = true;
  } else if (c.family == "qwen3") {
    c.qk_norm = true;
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
  } else {
    return ConfigError(absl::StrCat("unsupported model_type '", c.family,
                                    "' (supported: llama, mistral, qwen2, qwen3)"));
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

absl::StatusOr<ModelConfig> ParseHfConfigJson(std::string_view json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return ConfigError("not a JSON object");
  ModelConfig c;
  KVG_RETURN_IF_ERROR(ParseFamily(j, c));
  KVG_ASSIGN_OR_RETURN(c.vocab_size, RequireInt(j, "vocab_size"));
  KVG_ASSIGN_OR_RETURN(c.hidden_size, RequireInt(j, "hidden_size"));
  KVG_ASSIGN_OR_RETURN(c.intermediate_size, RequireInt(j, "intermediate_size"));
  KVG_ASSIGN_OR_RETURN(c.num_layers, RequireInt(j, "num_hidden_layers"));
  KVG_ASSIGN_OR_RETURN(c.num_heads, RequireInt(j, "num_attention_heads"));
  c.num_kv_heads = IntOr(j, "num_key_value_heads", c.num_heads);
  c.head_dim = IntOr(j, "head_dim", 0);
  if (c.head_dim <= 0) {
    if (c.hidden_size % c.num_heads != 0) return ConfigError("hidden_size not divisible by heads");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return ConfigError("num_attention_heads must be a multiple of num_key_value_heads");
  }
  if (c.head_dim % 2 != 0) return ConfigError("head_dim must be even for RoPE");
  c.max_position_embeddings = IntOr(j, "max_position_embeddings", 2048);
  c.rms_norm_eps = NumberOr(j, "rms_norm_eps", 1e-6);
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  if (auto act = j.find("hidden_act"); act != j.end() && act->is_string() && *act != "silu") {
    return ConfigError(absl::StrCat("unsupported hidden_act '", act->get<std::string>(), "'"));
  }
  KVG_RETURN_IF_ERROR(ParseRope(j, c.rope));
  c.bos_token_id = static_cast<int32_t>(IntOr(j, "bos_token_id", -1));
  c.eos_token_ids = IdList(j, "eos_token_id");
  return c;
}

}  // namespace

// A field of the wrong JSON type (e.g. "attention_bias": 512) makes
// nlohmann's value()/get() throw: it is a bad file, not a crash.
absl::StatusOr<ModelConfig> ParseHfConfig(std::string_view json_text) {
  try {
    return ParseHfConfigJson(json_text);
  } catch (const json::exception& e) {
    return ConfigError(absl::StrCat("a field has the wrong type: ", e.what()));
  }
}

absl::Status MergeGenerationConfig(std::string_view json_text, ModelConfig& config) try {
  json j = json::parse(json_text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("generation_config.json: not a JSON object");
  }
  std::vector<int32_t> eos = IdList(j, "eos_token_id");
  if (!eos.empty()) config.eos_token_ids = eos;
  config.bos_token_id = static_cast<int32_t>(IntOr(j, "bos_token_id", config.bos_token_id));
  return absl::OkStatus();
} catch (const json::exception& e) {
  return ConfigError(absl::StrCat("generation_config.json: a field has the wrong type: ", e.what()));
}

}  // namespace kvguard::engine
