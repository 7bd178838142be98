#include "services/server/access_control.h"

#include <sys/stat.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace kvguard::server {
namespace {

int64_t MtimeNs(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

absl::StatusOr<std::map<std::string, std::string>> ReadTokens(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("auth tokens file ", path, " cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  auto tokens = ParseTokens(text.str());
  if (!tokens.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", tokens.status().message()));
  return tokens;
}

// Compares every byte whatever the first difference, so the time taken does
// not tell how much of a guessed token was right.
bool SameSecret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % (b.empty() ? 1 : b.size())];
  return diff == 0 && !b.empty();
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> ParseTokens(const std::string& text) {
  std::map<std::string, std::string> tokens;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos)
      line = line.substr(0, hash);
    std::vector<absl::string_view> words =
        absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
    if (words.empty()) continue;
    if (words.size() > 2)
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": expected \"NAME TOKEN\" or \"TOKEN\""));
    const std::string token(words.back());
    if (token.size() < 16)
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": tokens must be at least 16 characters"));
    const std::string name =
        words.size() == 2 ? std::string(words[0]) : absl::StrCat("token-", line_no);
    if (!tokens.emplace(token, name).second)
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": duplicate token"));
  }
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens");
  return tokens;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::Load(
    const std::string& path) {
  std::unique_ptr<TokenAuthenticator> auth(new TokenAuthenticator(path));
  auto tokens = ReadTokens(path);
  if (!tokens.ok()) return tokens.status();
  auth->tokens_ = std::move(*tokens);
  auth->mtime_ns_ = MtimeNs(path);
  return auth;
}

void TokenAuthenticator::MaybeReload() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return;
  next_check_ = now + std::chrono::seconds(1);
  const int64_t mtime = MtimeNs(path_);
  if (mtime == mtime_ns_) return;
  auto tokens = ReadTokens(path_);
  if (!tokens.ok()) {
    // Keep serving with the tokens we have; a half-written file must not lock everyone out.
    std::cerr << "kvguard-server: keeping the previous auth tokens: " << tokens.status()
              << std::endl;
    return;
  }
  tokens_ = std::move(*tokens);
  mtime_ns_ = mtime;
  std::cout << "kvguard-server: reloaded " << tokens_.size() << " auth token(s) from " << path_
            << std::endl;
}

absl::StatusOr<std::string> TokenAuthenticator::Authenticate(const std::string& authorization) {
  constexpr absl::string_view kBearer = "Bearer ";
  if (authorization.empty())
    return absl::UnauthenticatedError("this server requires \"authorization: Bearer <token>\"");
  if (!absl::StartsWithIgnoreCase(authorization, kBearer))
    return absl::UnauthenticatedError("the authorization header must be \"Bearer <token>\"");
  const std::string presented(absl::StripAsciiWhitespace(authorization.substr(kBearer.size())));
  std::lock_guard<std::mutex> lock(mu_);
  MaybeReload();
  const std::string* name = nullptr;
  for (const auto& [token, client] : tokens_)
    if (SameSecret(presented, token)) name = &client;
  if (name == nullptr) return absl::PermissionDeniedError("the bearer token is not accepted");
  return *name;
}

std::string PeerIdentity(const grpc::CallbackServerContext& context) {
  if (auto auth = context.auth_context(); auth && auth->IsPeerAuthenticated()) {
    for (const auto& name : auth->GetPeerIdentity())
      return absl::StrCat("tls:", std::string(name.data(), name.size()));
  }
  // "ipv4:10.0.0.7:53412" / "ipv6:[::1]:53412": the address without the port.
  std::string peer = context.peer();
  if (const size_t colon = peer.rfind(':'); colon != std::string::npos && colon > 5)
    peer.resize(colon);
  return peer;
}

absl::StatusOr<std::unique_ptr<StreamQuota::Slot>> StreamQuota::Acquire(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  int& n = open_[client];
  if (max_ > 0 && n >= max_) {
    if (n == 0) open_.erase(client);
    return absl::ResourceExhaustedError(
        absl::StrCat("client ", client, " already has ", n,
                     " open streams (--max_streams_per_client=", max_, ")"));
  }
  ++n;
  return std::make_unique<Slot>(this, client);
}

int StreamQuota::open(const std::string& client) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(client);
  return it == open_.end() ? 0 : it->second;
}

void StreamQuota::Release(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(client);
  if (it != open_.end() && --it->second <= 0) open_.erase(it);
}

}  // namespace kvguard::server
