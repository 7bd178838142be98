// Server defaults a request can leave unset: compressor, ratio and the
// chunked-eviction period (compress_every 0 means "the server's default");
// the operator's limits on prompt and output length.
#include "services/server/request_validation.h"

#include <gtest/gtest.h>

namespace kvguard::server {
namespace {

v1::GenerateRequest Request(uint32_t compress_every) {
  v1::GenerateRequest r;
  for (int i = 0; i < 8; ++i) r.mutable_token_ids()->add_ids(3 + i);
  r.mutable_stopping()->set_max_new_tokens(4);
  r.mutable_compression()->set_compressor("knorm");
  r.mutable_compression()->mutable_ratio()->set_value(0.5);
  r.mutable_compression()->set_compress_every(compress_every);
  return r;
}

TEST(RequestValidationTest, CompressEveryZeroTakesTheServersDefault) {
  engine::ModelConfig config;
  config.vocab_size = 100;
  config.max_position_embeddings = 64;
  const ServerDefaults chunked{.compress_every = 16};
  auto a = ValidateGenerateRequest(Request(0), config, nullptr, chunked);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->request.compression.compress_every, 16);
  auto b =
      ValidateGenerateRequest(Request(1), config, nullptr, chunked);  // the client's own choice
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->request.compression.compress_every, 1);
  auto c = ValidateGenerateRequest(Request(0), config, nullptr, ServerDefaults{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->request.compression.compress_every, 0);  // every step, as before
}

TEST(RequestValidationTest, OperatorLimitsOnPromptAndNewTokensNameTheirFlag) {
  engine::ModelConfig config;
  config.vocab_size = 100;
  config.max_position_embeddings = 64;
  const ServerDefaults limits{.max_prompt_tokens = 8, .max_new_tokens = 4};
  ASSERT_TRUE(
      ValidateGenerateRequest(Request(0), config, nullptr, limits).ok());  // 8 and 4: at the limits
  v1::GenerateRequest long_prompt = Request(0);
  long_prompt.mutable_token_ids()->add_ids(5);
  auto a = ValidateGenerateRequest(long_prompt, config, nullptr, limits);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("--max_prompt_tokens"), std::string::npos) << a.status();
  v1::GenerateRequest long_output = Request(0);
  long_output.mutable_stopping()->set_max_new_tokens(5);
  auto b = ValidateGenerateRequest(long_output, config, nullptr, limits);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("--max_new_tokens"), std::string::npos) << b.status();
  EXPECT_TRUE(ValidateGenerateRequest(long_output, config, nullptr, ServerDefaults{}).ok());
}

}  // namespace
}  // namespace kvguard::server
