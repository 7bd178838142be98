// Config parsing and checkpoint opening, including the ways a checkpoint can be broken.
#include "services/engine/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "services/engine/engine.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::engine {
namespace {

using testing::DataPath;

TEST(ModelConfigTest, ReadsEveryFixtureFamily) {
  auto llama = OpenCheckpoint(DataPath("models/tiny-llama"));
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->config.family, "llama");
  EXPECT_EQ(llama->config.num_kv_heads, 2);
  EXPECT_FALSE(llama->config.tie_word_embeddings);
  EXPECT_FALSE(llama->tokenizer_path.empty());
  auto scaled = OpenCheckpoint(DataPath("models/tiny-llama31-ropescaled"));
  ASSERT_TRUE(scaled.ok());
  EXPECT_EQ(scaled->config.rope.scaling, RopeScaling::kLlama3);
  EXPECT_EQ(scaled->config.rope.factor, 8.0);
  EXPECT_EQ(scaled->config.rope.original_max_position, 64);
  EXPECT_EQ(scaled->config.rope.theta, 500000.0);
  auto qwen2 = OpenCheckpoint(DataPath("models/tiny-qwen2"));
  ASSERT_TRUE(qwen2.ok());
  EXPECT_TRUE(qwen2->config.qkv_bias);
  EXPECT_TRUE(qwen2->config.tie_word_embeddings);
  auto qwen3 = OpenCheckpoint(DataPath("models/tiny-qwen3"));
  ASSERT_TRUE(qwen3.ok());
  EXPECT_TRUE(qwen3->config.qk_norm);
  EXPECT_EQ(qwen3->config.head_dim, 32);
}

TEST(ModelConfigTest, TopLevelRopeKeys) {
  auto c = ParseHfConfig(R"({"model_type":"mistral","vocab_size":10,"hidden_size":8,
      "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
      "rope_theta":1000000.0,"eos_token_id":[3,4]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.theta, 1e6);
  EXPECT_EQ(c->num_kv_heads, 2);  // defaults to num_attention_heads (MHA)
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{3, 4}));
}

TEST(ModelConfigTest, RejectsBadConfigsWithNames) {
  auto msg = [](const std::string& text) { return std::string(ParseHfConfig(text).status().message()); };
  EXPECT_NE(msg("{oops").find("JSON"), std::string::npos);
  EXPECT_NE(msg(R"({"model_type":"gpt2"})").find("gpt2"), std::string::npos);
  EXPECT_NE(msg(R"({"model_type":"llama","vocab_size":10})").find("hidden_size"), std::string::npos);
  EXPECT_NE(msg(R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
      "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":3})").find("multiple"),
            std::string::npos);
  EXPECT_NE(msg(R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
      "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"rope_type":"yarn"}})").find("yarn"),
            std::string::npos);
  // Found by fuzz_model_config: a flag of the wrong JSON type threw out of the parser.
  EXPECT_NE(msg(R"({"model_type":"qwen3","attention_bias":512})").find("wrong type"), std::string::npos);
  EXPECT_NE(msg(R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
      "num_hidden_layers":1,"num_attention_heads":2,"tie_word_embeddings":"yes"})").find("wrong type"),
            std::string::npos);
}

// A copy of a fixture checkpoint with one file replaced.
std::string BrokenCopy(const testing::TempDir& tmp, const std::string& file, const std::string& bytes) {
  for (const auto& e : std::filesystem::directory_iterator(DataPath("models/tiny-llama"))) {
    std::filesystem::copy(e.path(), tmp.File(e.path().filename()));
  }
  std::filesystem::remove(tmp.File(file));
  testing::WriteFile(tmp.File(file), bytes);
  return tmp.path();
}

TEST(CheckpointTest, MalformedFilesGiveErrors) {
  {
    testing::TempDir tmp;
    auto s = Engine::Load(BrokenCopy(tmp, "config.json", "{\"model_type\": "), {}).status();
    EXPECT_NE(s.message().find("config.json"), std::string::npos) << s;
  }
  {
    testing::TempDir tmp;
    std::string st = testing::ReadFile(DataPath("models/tiny-llama/model.safetensors"));
    auto s = Engine::Load(BrokenCopy(tmp, "model.safetensors", st.substr(0, st.size() / 2)), {}).status();
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s;
  }
  {
    // A config that promises a bigger model than the weights hold.
    testing::TempDir tmp;
    auto cfg = nlohmann::json::parse(testing::ReadFile(DataPath("models/tiny-llama/config.json")));
    cfg["intermediate_size"] = 192;
    auto s = Engine::Load(BrokenCopy(tmp, "config.json", cfg.dump()), {}).status();
    EXPECT_NE(s.message().find("gate_proj"), std::string::npos) << s;
  }
  {
    testing::TempDir tmp;
    auto cfg = nlohmann::json::parse(testing::ReadFile(DataPath("models/tiny-llama/config.json")));
    cfg["num_hidden_layers"] = 4;
    auto s = Engine::Load(BrokenCopy(tmp, "config.json", cfg.dump()), {}).status();
    EXPECT_NE(s.message().find("missing weight 'model.layers.3"), std::string::npos) << s;
  }
  EXPECT_EQ(OpenCheckpoint("/no/such/dir").status().code(), absl::StatusCode::kNotFound);
}

TEST(Llama2cTest, HeaderAndTruncation) {
  auto ok = OpenLlama2cCheckpoint(testing::ModelsPath("stories260K/stories260K.bin"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->config.hidden_size, 64);
  EXPECT_EQ(ok->config.num_layers, 5);
  EXPECT_EQ(ok->config.num_kv_heads, 4);
  EXPECT_TRUE(ok->config.rope.interleaved_pairs);
  EXPECT_NE(ok->weights->Find("model.layers.4.mlp.down_proj.weight"), nullptr);

  testing::TempDir tmp;
  std::string bytes = testing::ReadFile(testing::ModelsPath("stories260K/stories260K.bin"));
  testing::WriteFile(tmp.File("trunc.bin"), bytes.substr(0, bytes.size() / 3));
  EXPECT_NE(OpenLlama2cCheckpoint(tmp.File("trunc.bin")).status().message().find("shorter"),
            std::string::npos);
  std::string header = bytes.substr(0, 28);
  int32_t bad_layers = -5;
  std::memcpy(header.data() + 8, &bad_layers, 4);
  testing::WriteFile(tmp.File("neg.bin"), header + bytes.substr(28));
  EXPECT_NE(OpenLlama2cCheckpoint(tmp.File("neg.bin")).status().message().find("header"),
            std::string::npos);
  testing::WriteFile(tmp.File("tiny.bin"), "abc");
  EXPECT_FALSE(OpenLlama2cCheckpoint(tmp.File("tiny.bin")).ok());
}

}  // namespace
}  // namespace kvguard::engine
