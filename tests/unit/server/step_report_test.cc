// The guard's StepReport carries a token's raw bytes: a byte-level token
// that splits a UTF-8 code point must survive serialization and parsing.
#include "services/server/step_report.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace kvguard::server {
namespace {

bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(StepReportTest, ATokenThatSplitsACodePointRoundTrips) {
  auto tokenizer =
      engine::Tokenizer::Load(std::string(KVG_TEST_DATA_DIR) + "/tokenizers/qwen2/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // A byte-level vocabulary has single-byte tokens such as 0xE2, the first
  // byte of "€" (E2 82 AC).
  int32_t split = -1;
  for (int32_t id = 0; id < (*tokenizer)->vocab_size() && split < 0; ++id) {
    if (!ValidUtf8((*tokenizer)->TokenBytes(id))) split = id;
  }
  ASSERT_GE(split, 0) << "no token splits a code point";
  engine::StepResult r;
  r.token.id = split;
  engine::ModelConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 1;
  const v1::StepReport report = MakeStepReport(r, config, tokenizer->get(), {.session_id = "s"});
  EXPECT_EQ(report.token_text(), (*tokenizer)->TokenBytes(split));
  std::string wire;
  ASSERT_TRUE(report.SerializeToString(&wire));
  v1::StepReport parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  EXPECT_EQ(parsed.token_text(), (*tokenizer)->TokenBytes(split));
  // What a proto3 string field (as token_text was) does with the same bytes.
  v1::StepReport as_string;
  as_string.set_session_id((*tokenizer)->TokenBytes(split));
  ASSERT_TRUE(as_string.SerializeToString(&wire));  // logs "invalid UTF-8 data when serializing"
  EXPECT_FALSE(parsed.ParseFromString(wire));
}

}  // namespace
}  // namespace kvguard::server
