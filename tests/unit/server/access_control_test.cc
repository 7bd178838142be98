// Bearer tokens (parsing, UNAUTHENTICATED vs PERMISSION_DENIED, rotation by
// rewriting the file) and the per-client stream quota.
#include "services/server/access_control.h"

#include <gtest/gtest.h>

#include <thread>

#include "tests/unit/engine/test_util.h"

namespace kvguard::server {
namespace {

TEST(ParseTokensTest, NamesCommentsAndBareTokens) {
  auto t = ParseTokens("# clients\nalice aaaaaaaaaaaaaaaa1\n\nbbbbbbbbbbbbbbbb2  # bare\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->size(), 2u);
  EXPECT_EQ(t->at("aaaaaaaaaaaaaaaa1"), "alice");
  EXPECT_EQ(t->at("bbbbbbbbbbbbbbbb2"), "token-4");
}

TEST(ParseTokensTest, RejectsShortDuplicateMalformedAndEmpty) {
  EXPECT_FALSE(ParseTokens("alice short\n").ok());
  EXPECT_FALSE(ParseTokens("a aaaaaaaaaaaaaaaa1\nb aaaaaaaaaaaaaaaa1\n").ok());
  EXPECT_FALSE(ParseTokens("a b aaaaaaaaaaaaaaaa1\n").ok());
  EXPECT_FALSE(ParseTokens("# nothing\n").ok());
}

TEST(TokenAuthenticatorTest, MissingWrongAndRotatedTokens) {
  testing::TempDir tmp;
  const std::string path = tmp.File("tokens");
  testing::WriteFile(path, "alice aaaaaaaaaaaaaaaa1\n");
  auto auth = TokenAuthenticator::Load(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->Authenticate("").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*auth)->Authenticate("Basic abc").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*auth)->Authenticate("Bearer aaaaaaaaaaaaaaaa2").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*auth)->Authenticate("Bearer aaaaaaaaaaaaaaaa").status().code(),
            absl::StatusCode::kPermissionDenied);  // a prefix of a token is not the token
  auto who = (*auth)->Authenticate("Bearer aaaaaaaaaaaaaaaa1");
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(*who, "alice");

  // Rotation: the file is re-read when it changes (checked at most once a second).
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  testing::WriteFile(path, "bob bbbbbbbbbbbbbbbb1\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ((*auth)->Authenticate("Bearer aaaaaaaaaaaaaaaa1").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*auth)->Authenticate("Bearer bbbbbbbbbbbbbbbb1").value_or(""), "bob");

  // A broken file keeps the tokens that worked.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  testing::WriteFile(path, "bob short\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ((*auth)->Authenticate("Bearer bbbbbbbbbbbbbbbb1").value_or(""), "bob");
}

TEST(TokenAuthenticatorTest, MissingFileIsAnErrorAtStartup) {
  EXPECT_EQ(TokenAuthenticator::Load("/nonexistent/tokens").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(StreamQuotaTest, OneClientsLimitLeavesOthersAlone) {
  StreamQuota quota(2);
  auto a1 = quota.Acquire("alice");
  auto a2 = quota.Acquire("alice");
  ASSERT_TRUE(a1.ok() && a2.ok());
  auto a3 = quota.Acquire("alice");
  EXPECT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(a3.status().message().find("--max_streams_per_client=2"), std::string::npos);
  EXPECT_TRUE(quota.Acquire("bob").ok());
  a1->reset();  // a stream ends: its slot is free again
  EXPECT_EQ(quota.open("alice"), 1);
  EXPECT_TRUE(quota.Acquire("alice").ok());
  StreamQuota unlimited(0);
  std::vector<std::unique_ptr<StreamQuota::Slot>> many;
  for (int i = 0; i < 100; ++i) many.push_back(*unlimited.Acquire("alice"));
  EXPECT_EQ(unlimited.open("alice"), 100);
}

}  // namespace
}  // namespace kvguard::server
