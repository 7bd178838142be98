// kvguard-server and kvguard-guard as real processes with the production
// security settings: TLS and mutual TLS from files (and their rotation),
// mTLS between server and guard, bearer tokens, the per-client stream
// limit, request size and length limits, reflection off by default.
// Certificates are made per test run with the openssl CLI.
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <thread>

#include "services/client/generation_client.h"
#include "tests/integration/process.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard {
namespace {

using client::ChannelOptions;
using client::GenerationClient;
using testing::ChildProcess;

int Shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// A CA and, signed by it, a server certificate for localhost/127.0.0.1 and a
// client certificate "client-a": <dir>/<prefix>{ca,server,client}.{pem,key}.
void MakePki(const std::string& dir, const std::string& prefix) {
  const std::string p = dir + "/" + prefix;
  ASSERT_EQ(Shell("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=" + prefix +
                  "ca -keyout " + p + "ca.key -out " + p + "ca.pem"),
            0);
  testing::WriteFile(dir + "/san.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  for (const std::string who : {"server", "client"}) {
    ASSERT_EQ(Shell("openssl req -newkey rsa:2048 -nodes -subj /CN=" + who + "-a -keyout " + p +
                    who + ".key -out " + p + who + ".csr"),
              0);
    ASSERT_EQ(Shell("openssl x509 -req -in " + p + who + ".csr -CA " + p + "ca.pem -CAkey " + p +
                    "ca.key -CAcreateserial -days 2 -extfile " + dir + "/san.ext -out " + p + who +
                    ".pem"),
              0);
  }
}

struct Proc {
  std::unique_ptr<ChildProcess> process;
  std::string address;
  int port = 0;
  int metrics_port = 0;
};

Proc Start(const std::string& binary, std::vector<std::string> extra) {
  Proc s;
  s.metrics_port = testing::FreePort();
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--metrics_listen",
                                   "127.0.0.1:" + std::to_string(s.metrics_port)};
  if (binary == "kvguard-server")
    args.insert(args.end(), {"--model", testing::ModelsPath("stories260K/stories260K.bin")});
  else
    args.insert(args.end(), {"--model", "none", "--config", "none"});
  args.insert(args.end(), extra.begin(), extra.end());
  s.process = std::make_unique<ChildProcess>(std::string(KVG_BIN_DIR) + "/" + binary, args);
  auto port = s.process->WaitFor("listening on 127\\.0\\.0\\.1:([0-9]+)", std::chrono::seconds(30));
  EXPECT_TRUE(port.has_value()) << s.process->output();
  s.port = std::stoi(port.value_or("0"));
  s.address = "127.0.0.1:" + port.value_or("0");
  return s;
}

v1::GenerateRequest IdsRequest(int n_prompt, int max_new) {
  v1::GenerateRequest r;
  for (int i = 0; i < n_prompt; ++i) r.mutable_token_ids()->add_ids(1 + i);
  r.mutable_stopping()->set_max_new_tokens(max_new);
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

absl::StatusCode InfoCode(const std::string& address, const ChannelOptions& options) {
  auto channel = client::OpenChannel(address, options);
  if (!channel.ok()) return channel.status().code();
  GenerationClient c(*channel, address, options.auth_token);
  return c.GetModelInfo().status().code();
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    MakePki(dir_->path(), "");
    MakePki(dir_->path(), "next-");
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string F(const std::string& name) { return dir_->File(name); }
  static ChannelOptions Tls(const std::string& prefix = "") {
    return {.tls_files = {.ca_file = F(prefix + "ca.pem"), .server_name = "localhost"}};
  }
  static testing::TempDir* dir_;
};
testing::TempDir* SecurityTest::dir_ = nullptr;

TEST_F(SecurityTest, TlsServerRefusesPlaintextAndUntrustedClients) {
  Proc s = Start("kvguard-server",
                 {"--tls_cert_file", F("server.pem"), "--tls_key_file", F("server.key")});
  EXPECT_EQ(InfoCode(s.address, Tls()), absl::StatusCode::kOk);
  EXPECT_NE(InfoCode(s.address, {}), absl::StatusCode::kOk);            // plaintext
  EXPECT_NE(InfoCode(s.address, Tls("next-")), absl::StatusCode::kOk);  // another CA
  EXPECT_NE(s.process->output().find(", TLS,"), std::string::npos) << s.process->output();
}

TEST_F(SecurityTest, MutualTlsNeedsAClientCertificate) {
  Proc s = Start("kvguard-server", {"--tls_cert_file", F("server.pem"), "--tls_key_file",
                                    F("server.key"), "--tls_client_ca_file", F("ca.pem")});
  EXPECT_NE(InfoCode(s.address, Tls()), absl::StatusCode::kOk);
  ChannelOptions with_cert = Tls();
  with_cert.tls_files.cert_file = F("client.pem");
  with_cert.tls_files.key_file = F("client.key");
  EXPECT_EQ(InfoCode(s.address, with_cert), absl::StatusCode::kOk);
  ChannelOptions wrong_cert = Tls();
  wrong_cert.tls_files.cert_file =
      F("next-client.pem");  // signed by a CA the server does not trust
  wrong_cert.tls_files.key_file = F("next-client.key");
  EXPECT_NE(InfoCode(s.address, wrong_cert), absl::StatusCode::kOk);
}

TEST_F(SecurityTest, RotatedCertificateIsServedWithoutRestart) {
  testing::TempDir live;
  std::filesystem::copy_file(F("server.pem"), live.File("tls.crt"));
  std::filesystem::copy_file(F("server.key"), live.File("tls.key"));
  Proc s = Start("kvguard-server", {"--tls_cert_file", live.File("tls.crt"), "--tls_key_file",
                                    live.File("tls.key"), "--tls_reload_s", "1"});
  EXPECT_EQ(InfoCode(s.address, Tls()), absl::StatusCode::kOk);
  EXPECT_NE(InfoCode(s.address, Tls("next-")), absl::StatusCode::kOk);
  // What a Secret update does: new files in place (rename, as the kubelet's symlink swap).
  std::filesystem::copy_file(F("next-server.key"), live.File("tls.key.new"));
  std::filesystem::copy_file(F("next-server.pem"), live.File("tls.crt.new"));
  std::filesystem::rename(live.File("tls.key.new"), live.File("tls.key"));
  std::filesystem::rename(live.File("tls.crt.new"), live.File("tls.crt"));
  bool rotated = false;
  for (int i = 0; i < 50 && !rotated; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    rotated = InfoCode(s.address, Tls("next-")) == absl::StatusCode::kOk;
  }
  EXPECT_TRUE(rotated) << s.process->output();
}

TEST_F(SecurityTest, ServerAndGuardTalkMutualTls) {
  Proc g = Start("kvguard-guard", {"--tls_cert_file", F("server.pem"), "--tls_key_file",
                                   F("server.key"), "--tls_client_ca_file", F("ca.pem")});
  const std::string guard_addr = "127.0.0.1:" + std::to_string(g.port);
  Proc good = Start("kvguard-server",
                    {"--guard", guard_addr, "--guard_deadline_ms", "500", "--guard_tls_ca_file",
                     F("ca.pem"), "--guard_tls_cert_file", F("client.pem"), "--guard_tls_key_file",
                     F("client.key"), "--guard_tls_server_name", "localhost"});
  v1::GenerateRequest r = IdsRequest(1, 24);
  r.mutable_compression()->mutable_guard()->set_value(true);
  auto out = GenerationClient(good.address).Generate(r);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->complete.fail_safe_events(), 0u) << good.process->output();
  EXPECT_EQ(testing::MetricValue(testing::HttpGet(good.metrics_port, "/metrics"),
                                 "kvguard_guard_connected"),
            1);

  // Without a client certificate the guard refuses the link: every guarded step runs fail-safe.
  Proc plain = Start("kvguard-server", {"--guard", guard_addr, "--guard_connect_wait_ms", "500",
                                        "--guard_deadline_ms", "50", "--guard_tls_ca_file",
                                        F("ca.pem"), "--guard_tls_server_name", "localhost"});
  auto refused = GenerationClient(plain.address).Generate(r);
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_GT(refused->complete.fail_safe_events(), 0u);
  EXPECT_EQ(testing::MetricValue(testing::HttpGet(plain.metrics_port, "/metrics"),
                                 "kvguard_guard_connected"),
            0);
}

TEST_F(SecurityTest, BearerTokensAndPerClientStreamLimit) {
  testing::TempDir tmp;
  testing::WriteFile(tmp.File("tokens"), "alice aaaaaaaaaaaaaaaa1\nbob bbbbbbbbbbbbbbbb1\n");
  Proc s = Start("kvguard-server",
                 {"--auth_tokens_file", tmp.File("tokens"), "--max_streams_per_client", "1"});
  EXPECT_EQ(InfoCode(s.address, {}), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(InfoCode(s.address, {.auth_token = "cccccccccccccccc1"}),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(InfoCode(s.address, {.auth_token = "aaaaaaaaaaaaaaaa1"}), absl::StatusCode::kOk);
  auto alice = [&] {
    return GenerationClient(*client::OpenChannel(s.address, {}), s.address, "aaaaaaaaaaaaaaaa1");
  };
  EXPECT_EQ(GenerationClient(s.address).Generate(IdsRequest(1, 4)).status().code(),
            absl::StatusCode::kUnauthenticated);

  // Alice holds one long stream: her second is refused, Bob's is not. A stream that ends
  // before her second call arrives (a fast machine streams 500 tokens in tens of ms) is
  // replaced by a new one, so the probe never depends on the engine's speed.
  bool refused = false;
  for (int attempt = 0; attempt < 20 && !refused; ++attempt) {
    std::promise<void> started;
    auto first = std::async(std::launch::async, [&] {
      bool once = true;
      return alice().Generate(IdsRequest(1, 500), [&](const v1::TokenChunk&) {
        if (once) started.set_value();
        once = false;
      });
    });
    ASSERT_EQ(started.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
    auto second = alice().Generate(IdsRequest(1, 2));
    refused = second.status().code() == absl::StatusCode::kResourceExhausted;
    if (refused) {
      EXPECT_NE(second.status().message().find("max_streams_per_client"), std::string::npos);
      GenerationClient bob(*client::OpenChannel(s.address, {}), s.address, "bbbbbbbbbbbbbbbb1");
      EXPECT_TRUE(bob.Generate(IdsRequest(1, 2)).ok());
    } else {
      EXPECT_TRUE(second.ok()) << second.status();  // only after her first had ended
    }
    auto done = first.get();
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->token_ids.size(), 500u);
  }
  EXPECT_TRUE(refused);
  EXPECT_TRUE(alice().Generate(IdsRequest(1, 2)).ok());  // her slot is free again
}

TEST_F(SecurityTest, LengthAndSizeLimitsGetClearStatuses) {
  Proc s = Start("kvguard-server", {"--max_prompt_tokens", "16", "--max_new_tokens", "32",
                                    "--max_request_bytes", "4096"});
  GenerationClient c(s.address);
  EXPECT_TRUE(c.Generate(IdsRequest(16, 32)).ok());
  auto long_prompt = c.Generate(IdsRequest(17, 4));
  EXPECT_EQ(long_prompt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(long_prompt.status().message().find("--max_prompt_tokens"), std::string::npos);
  auto long_output = c.Generate(IdsRequest(1, 33));
  EXPECT_EQ(long_output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(long_output.status().message().find("--max_new_tokens"), std::string::npos);
  v1::GenerateRequest big = IdsRequest(1, 4);
  big.set_gold_answer(std::string(8192, '1'));
  EXPECT_EQ(c.Generate(big).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(c.Generate(IdsRequest(2, 2)).ok());  // the server is fine afterwards
}

// grpc.reflection is served only with --enable_reflection.
absl::StatusCode ReflectionCode(const std::string& address) {
  grpc::GenericStub generic(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) { done.set_value(s); });
  return static_cast<absl::StatusCode>(done.get_future().get().error_code());
}

TEST_F(SecurityTest, ReflectionIsOffUnlessEnabled) {
  Proc off = Start("kvguard-server", {});
  EXPECT_EQ(ReflectionCode(off.address), absl::StatusCode::kUnimplemented);
  Proc on = Start("kvguard-server", {"--enable_reflection"});
  EXPECT_NE(ReflectionCode(on.address), absl::StatusCode::kUnimplemented);
}

TEST_F(SecurityTest, BadTlsAuthOrPluginSettingsStopTheServer) {
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--tls_cert_file", F("server.pem")},
        {"--tls_cert_file", "/nonexistent.pem", "--tls_key_file", F("server.key")},
        {"--auth_tokens_file", "/nonexistent/tokens"},
        {"--plugins", "libkvg_example_recent.so"},
        {"--plugins", "../bin/kvguard", "--plugin_dir", std::string(KVG_BIN_DIR) + "/../lib"}}) {
    std::vector<std::string> args = {
        "--model",          testing::ModelsPath("stories260K/stories260K.bin"),
        "--listen",         "127.0.0.1:0",
        "--metrics_listen", ""};
    args.insert(args.end(), bad.begin(), bad.end());
    ChildProcess p(std::string(KVG_BIN_DIR) + "/kvguard-server", args);
    EXPECT_EQ(p.Wait(std::chrono::seconds(30)), 1) << bad[0];  // the reason goes to stderr
  }
}

}  // namespace
}  // namespace kvguard
