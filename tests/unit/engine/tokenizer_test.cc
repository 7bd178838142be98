#include "services/engine/tokenizer.h"

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/engine/pretokenizer.h"

namespace kvguard::engine {
namespace {

using json = nlohmann::json;

constexpr const char* kFixtures[] = {"qwen2", "llama3", "gpt2"};

// Asserts that a status message names what it should (gmock is not linked).
::testing::AssertionResult Mentions(absl::string_view message, absl::string_view needle) {
  if (message.find(needle) != absl::string_view::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << message << "' does not mention '" << needle << "'";
}

std::string FixtureDir(const std::string& name) {
  return std::string(KVG_TEST_DATA_DIR) + "/tokenizers/" + name;
}

json ReadJson(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  EXPECT_TRUE(text.ok()) << text.status();
  return json::parse(text.ok() ? *text : "null");
}

std::unique_ptr<Tokenizer> LoadFixture(const std::string& name) {
  auto tok = Tokenizer::Load(FixtureDir(name));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

// Loads a fixture's JSON, lets `edit` change it, and parses the result.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadEdited(const std::string& name,
                                                      void (*edit)(json&)) {
  json root = ReadJson(FixtureDir(name) + "/tokenizer.json");
  edit(root);
  return Tokenizer::FromJson(root.dump());
}

std::vector<int32_t> IdsOfBytes(const Tokenizer& tok, std::string_view bytes) {
  std::vector<int32_t> ids;
  for (char c : bytes) {
    auto id = tok.TokenToId(ByteLevelAlphabet()[static_cast<uint8_t>(c)]);
    EXPECT_TRUE(id.has_value());
    ids.push_back(id.value_or(0));
  }
  return ids;
}

std::string DecodeIncrementally(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  IncrementalDecoder decoder(&tok);
  std::string text;
  for (int32_t id : ids) {
    std::string delta = decoder.Push(id);
    EXPECT_TRUE(IsValidUtf8(delta));
    text += delta;
  }
  std::string rest = decoder.Flush();
  EXPECT_TRUE(IsValidUtf8(rest));
  return text + rest;
}

class FixtureTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    tok_ = LoadFixture(GetParam());
    ASSERT_NE(tok_, nullptr);
    cases_ = ReadJson(FixtureDir(GetParam()) + "/cases.json").at("cases");
    ASSERT_FALSE(cases_.empty());
  }
  std::unique_ptr<Tokenizer> tok_;
  json cases_;
};

TEST_P(FixtureTest, EncodeMatchesReference) {
  for (const json& c : cases_) {
    std::string text = c.at("text");
    SCOPED_TRACE(text);
    auto ids = tok_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c.at("ids").get<std::vector<int32_t>>());
  }
}

TEST_P(FixtureTest, DecodeMatchesReference) {
  for (const json& c : cases_) {
    SCOPED_TRACE(c.at("text").get<std::string>());
    EXPECT_EQ(tok_->Decode(c.at("ids").get<std::vector<int32_t>>()),
              c.at("decoded").get<std::string>());
  }
}

TEST_P(FixtureTest, IncrementalDecodeEqualsDecode) {
  for (const json& c : cases_) {
    SCOPED_TRACE(c.at("text").get<std::string>());
    auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(DecodeIncrementally(*tok_, ids), tok_->Decode(ids));
  }
}

TEST_P(FixtureTest, MergesAsStringsEncodeTheSame) {
  auto tok = LoadEdited(GetParam(), [](json& root) {
    for (json& merge : root["model"]["merges"]) {
      merge = merge[0].get<std::string>() + " " + merge[1].get<std::string>();
    }
  });
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const json& c : cases_) {
    EXPECT_EQ((*tok)->Encode(c.at("text").get<std::string>()).value(),
              c.at("ids").get<std::vector<int32_t>>());
  }
}

TEST_P(FixtureTest, ConcurrentEncodeIsConsistent) {
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (const json& c : cases_) {
          auto ids = tok_->Encode(c.at("text").get<std::string>());
          if (!ids.ok() || *ids != c.at("ids").get<std::vector<int32_t>>()) ++failures[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

TEST_P(FixtureTest, LongInputsRoundTrip) {
  for (const std::string& text :
       {std::string(100000, ' '), std::string(100000, 'a'), std::string(20000, '\n') + "x",
        "\xE6\x9D\xB1" + std::string(5000, '!')}) {
    auto ids = tok_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(tok_->Decode(*ids), text);
  }
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, FixtureTest, ::testing::ValuesIn(kFixtures));

TEST(TokenizerTest, LoadAcceptsDirectoryAndFile) {
  auto from_dir = Tokenizer::Load(FixtureDir("qwen2"));
  auto from_file = Tokenizer::Load(FixtureDir("qwen2") + "/tokenizer.json");
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ((*from_dir)->Encode("Hello world").value(),
            (*from_file)->Encode("Hello world").value());
  EXPECT_EQ((*from_dir)->vocab_size(), (*from_file)->vocab_size());
}

TEST(TokenizerTest, MissingFileFailsWithPath) {
  auto tok = Tokenizer::Load("/nonexistent/kvguard/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Mentions(tok.status().message(), "/nonexistent/kvguard/tokenizer.json"));
}

TEST(TokenizerTest, MalformedJsonFailsCleanly) {
  for (const char* text :
       {"{not json", "", "[]", "{\"model\": 3}", "{\"model\": {\"type\": \"BPE\"}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []},"
        " \"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
        " \"decoder\": {\"type\": \"ByteLevel\"}}",
        // Found by fuzz_tokenizer: a float id overflowed the int conversion, a huge
        // one would size the id table.
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 4.2e46}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 2000000000}, \"merges\": []}}"}) {
    SCOPED_TRACE(text);
    auto tok = Tokenizer::FromJson(text);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Mentions(tok.status().message(), "tokenizer.json"));
  }
}

TEST(TokenizerTest, UnsupportedComponentsAreNamed) {
  struct Case {
    void (*edit)(json&);
    const char* expected;
  };
  const Case cases[] = {
      {[](json& r) { r["model"]["type"] = "WordPiece"; }, "model type 'WordPiece'"},
      {[](json& r) {
         r["normalizer"] = {{"type", "NFC"}};
       },
       "normalizer type 'NFC'"},
      {[](json& r) {
         r["pre_tokenizer"] = {{"type", "Metaspace"}};
       },
       "unsupported pre_tokenizer type 'Metaspace'"},
      {[](json& r) { r["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
       "Split behavior 'Removed'"},
      {[](json& r) { r["pre_tokenizer"]["pretokenizers"][0]["invert"] = true; }, "invert"},
      {[](json& r) {
         r["decoder"] = {{"type", "WordPiece"}};
       },
       "decoder type 'WordPiece'"},
      {[](json& r) { r["model"]["byte_fallback"] = true; }, "byte_fallback"},
      {[](json& r) { r["added_tokens"][0]["single_word"] = true; }, "single_word"},
  };
  for (const Case& c : cases) {
    auto tok = LoadEdited("qwen2", c.edit);
    ASSERT_FALSE(tok.ok()) << c.expected;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Mentions(tok.status().message(), c.expected));
  }
}

TEST(TokenizerTest, AddPrefixSpacePrependsSpace) {
  auto tok = LoadEdited("gpt2", [](json& r) { r["pre_tokenizer"]["add_prefix_space"] = true; });
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto plain = LoadFixture("gpt2");
  EXPECT_EQ((*tok)->Encode("Hello world").value(), plain->Encode(" Hello world").value());
  EXPECT_EQ((*tok)->Encode(" Hello").value(), plain->Encode(" Hello").value());
  // Each piece between added tokens gets its own prefix space.
  EXPECT_EQ((*tok)->Encode("a<|im_end|>b").value(), plain->Encode(" a<|im_end|> b").value());
}

TEST(TokenizerTest, AddedTokensAndLookups) {
  auto tok = LoadFixture("qwen2");
  EXPECT_EQ(tok->TokenToId("<|im_end|>"), 2);
  EXPECT_EQ(tok->TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(tok->TokenBytes(2), "<|im_end|>");
  EXPECT_EQ(tok->TokenBytes(-1), "");
  EXPECT_EQ(tok->TokenBytes(tok->vocab_size()), "");
  EXPECT_EQ(tok->Encode("<|im_end|><|im_end|>").value(), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(tok->Decode({2, -5, 1 << 30, 2}), "<|im_end|><|im_end|>");
}

TEST(TokenizerTest, IgnoreMergesUsesWholeWordToken) {
  auto edit = [](json& r) {
    r["model"]["vocab"]["\u0120zzqq"] = 5000;  // " zzqq", unreachable by merges
  };
  auto merged = LoadEdited("gpt2", edit);
  auto whole = LoadEdited("gpt2", [](json& r) {
    r["model"]["vocab"]["\u0120zzqq"] = 5000;
    r["model"]["ignore_merges"] = true;
  });
  ASSERT_TRUE(merged.ok()) << merged.status();
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ((*whole)->Encode("a zzqq").value(),
            (std::vector<int32_t>{(*whole)->TokenToId("a").value(), 5000}));
  EXPECT_GT((*merged)->Encode(" zzqq").value().size(), 1u);
  EXPECT_EQ((*whole)->vocab_size(), 5001);
}

TEST(TokenizerTest, AddedTokenStripsWhitespace) {
  auto tok = LoadEdited("qwen2", [](json& r) {
    r["added_tokens"][2]["lstrip"] = true;  // <|im_end|>
    r["added_tokens"][2]["rstrip"] = true;
  });
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto plain = LoadFixture("qwen2");
  EXPECT_EQ((*tok)->Encode("a  <|im_end|> \n b").value(), plain->Encode("a<|im_end|>b").value());
}

TEST(TokenizerTest, EncodeRejectsInvalidUtf8) {
  auto tok = LoadFixture("gpt2");
  EXPECT_FALSE(tok->Encode("ab\xFF").ok());
  EXPECT_FALSE(tok->Encode("\xED\xA0\x80").ok());  // encoded surrogate
}

TEST(Utf8Test, LossyMatchesPythonReplace) {
  // Expected values from Python's bytes.decode("utf-8", errors="replace").
  const std::pair<std::string, std::string> cases[] = {
      {"\xE4\xB8", "\xEF\xBF\xBD"},
      {"\xE4\xB8"
       "a",
       "\xEF\xBF\xBD"
       "a"},
      {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
      {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},
      {"\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
      {"\xF0\x9F\x98"
       "\xF0\x9F\x98\x80",
       "\xEF\xBF\xBD\xF0\x9F\x98\x80"},
      {"\x80\xBF"
       "x",
       "\xEF\xBF\xBD\xEF\xBF\xBD"
       "x"},
  };
  for (const auto& [in, want] : cases) {
    std::string out;
    EXPECT_EQ(AppendUtf8Lossy(in, false, &out), in.size());
    EXPECT_EQ(out, want);
  }
}

TEST(RegexSplitterTest, WhitespaceFollowsOniguruma) {
  // U+180E is not White_Space (HF's Oniguruma agrees) though PCRE2's \s
  // matches it.
  auto splitter = RegexSplitter::Compile(R"(\s+(?!\S)|\s+|[^\s]+)", false);
  ASSERT_TRUE(splitter.ok()) << splitter.status();
  std::vector<std::string> pieces;
  ASSERT_TRUE((*splitter)->SplitIsolated("a\xE1\xA0\x8E b\xC2\xA0", &pieces).ok());
  EXPECT_EQ(pieces, (std::vector<std::string>{"a\xE1\xA0\x8E", " ", "b", "\xC2\xA0"}));
}

TEST(IncrementalDecoderTest, RandomIdsMatchDecode) {
  auto tok = LoadFixture("llama3");
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> pick(-2, tok->vocab_size() + 2);
  for (int round = 0; round < 500; ++round) {
    std::vector<int32_t> ids(rng() % 12);
    for (int32_t& id : ids) id = pick(rng);
    EXPECT_EQ(DecodeIncrementally(*tok, ids), tok->Decode(ids));
  }
}

TEST(IncrementalDecoderTest, HoldsBackSplitCodePoints) {
  auto tok = LoadFixture("gpt2");
  std::string text = "\xC3\xA9\xE6\x9D\xB1\xF0\x9F\x98\x80!";  // é東😀!
  std::vector<int32_t> ids = IdsOfBytes(*tok, text);
  IncrementalDecoder decoder(tok.get());
  std::vector<std::string> deltas;
  for (int32_t id : ids) deltas.push_back(decoder.Push(id));
  EXPECT_EQ(deltas, (std::vector<std::string>{"", "\xC3\xA9", "", "", "\xE6\x9D\xB1", "", "", "",
                                              "\xF0\x9F\x98\x80", "!"}));
  EXPECT_EQ(decoder.Flush(), "");
}

TEST(IncrementalDecoderTest, InvalidBytesMatchDecode) {
  auto tok = LoadFixture("gpt2");
  for (const std::string bytes :
       {"\xFF", "\xE6\x9D", "a\xE6\x9Dz", "\xED\xA0\x80", "\xF0\x9F\x98\xF0\x9F\x98\x80", "\xC3"}) {
    std::vector<int32_t> ids = IdsOfBytes(*tok, bytes);
    EXPECT_EQ(DecodeIncrementally(*tok, ids), tok->Decode(ids));
  }
  IncrementalDecoder decoder(tok.get());
  EXPECT_EQ(decoder.Push(IdsOfBytes(*tok, "\xFF")[0]), "\xEF\xBF\xBD");  // never completable
}

}  // namespace
}  // namespace kvguard::engine
