// kvguard-client against a real kvguard-server on loopback, with the connect
// failure of Debian's gRPC 1.51 reproduced by tests/support/errno_clobber_preload.c
// (an in-progress connect reported as failed with a stale errno; see
// GenerationClient::Connect). A fail-fast call fails exactly as the issue
// reported it; the client's connect step retries the connection and succeeds.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/integration/process.h"

namespace kvguard {
namespace {

struct ClientRun {
  int exit_code = -1;
  std::string output;
  int clobbers = 0;
};

ClientRun ClientWithShim(const std::string& address, const std::string& extra) {
  const std::string log = ::testing::TempDir() + "/clobber_" + std::to_string(getpid()) + ".log";
  std::filesystem::remove(log);
  const std::string cmd =
      "LD_PRELOAD=" KVG_ERRNO_CLOBBER_SHIM " KVG_CLOBBER_CONNECTS=1 KVG_CLOBBER_LOG=" + log + " " +
      std::string(KVG_BIN_DIR) + "/kvguard-client --server=" + address +
      " --ids=1 --max_new_tokens=4 --deadline_ms=20000 " + extra + " 2>&1";
  ClientRun run;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof(buf), p)) > 0) run.output.append(buf, k);
  const int status = pclose(p);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(log);
  std::string line;
  while (std::getline(in, line)) ++run.clobbers;
  return run;
}

class ClientConnectTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new testing::ChildProcess(
        std::string(KVG_BIN_DIR) + "/kvguard-server",
        {"--model", std::string(KVG_MODELS_DIR) + "/stories260K/stories260K.bin", "--listen",
         "127.0.0.1:0", "--metrics_listen", "", "--threads",
         "1"});  // no fixed metrics port: tests run in parallel
    auto port = server_->WaitFor("listening on 127\\.0\\.0\\.1:([0-9]+)", std::chrono::seconds(30));
    ASSERT_TRUE(port.has_value()) << server_->output();
    address_ = "127.0.0.1:" + *port;
  }
  static void TearDownTestSuite() { delete server_; }
  static testing::ChildProcess* server_;
  static std::string address_;
};
testing::ChildProcess* ClientConnectTest::server_ = nullptr;
std::string ClientConnectTest::address_;

TEST_F(ClientConnectTest, AFailFastCallFailsWithTheStaleErrnoAsReported) {
  const ClientRun run = ClientWithShim(address_, "--connect_timeout_ms=0");
  ASSERT_EQ(run.clobbers, 1) << "the shim saw no in-progress connect\n" << run.output;
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("UNAVAILABLE"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("No such file or directory"), std::string::npos) << run.output;
}

TEST_F(ClientConnectTest, TheClientReconnectsBeforeSendingAndSucceeds) {
  const ClientRun run = ClientWithShim(address_, "");
  ASSERT_EQ(run.clobbers, 1) << "the shim saw no in-progress connect\n" << run.output;
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("4 tokens"), std::string::npos) << run.output;
}

TEST_F(ClientConnectTest, ADownServerGivesUnavailableAfterTheConnectTimeout) {
  const int port = testing::FreePort();  // nothing listens there
  const auto start = std::chrono::steady_clock::now();
  const ClientRun run =
      ClientWithShim("127.0.0.1:" + std::to_string(port), "--connect_timeout_ms=1500");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.output.find("UNAVAILABLE: cannot connect to 127.0.0.1:" + std::to_string(port) +
                            " within 1500 ms"),
            std::string::npos)
      << run.output;
  EXPECT_LT(s, 10.0);
}

}  // namespace
}  // namespace kvguard
