#include "common/grpc_serve.h"

#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "common/grpc_reflection.h"

namespace kvguard {

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(grpc::Service& service,
                                                              const ServeOptions& options,
                                                              int* port) {
  auto credentials = MakeServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) {
    if (absl::Status st = EnableServerReflection(); !st.ok()) return st;
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, port);
  if (options.configure) options.configure(builder);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || *port == 0) return absl::UnavailableError("cannot listen on " + options.listen);
  return server;
}

namespace {

// Inodes of this process's sockets, from the /proc/self/fd links "socket:[N]".
std::set<unsigned long> OwnSocketInodes() {
  std::set<unsigned long> inodes;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return inodes;
  while (const dirent* entry = readdir(dir)) {
    char target[64];
    const std::string link = std::string("/proc/self/fd/") + entry->d_name;
    const ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    unsigned long inode = 0;
    if (std::sscanf(target, "socket:[%lu]", &inode) == 1) inodes.insert(inode);
  }
  closedir(dir);
  return inodes;
}

// Established connections in a /proc/net/tcp-format table whose local port
// is `port` and whose socket is one of `inodes`.
int CountEstablished(const char* table, int port, const std::set<unsigned long>& inodes) {
  std::ifstream in(table);
  std::string line;
  std::getline(in, line);  // header
  int count = 0;
  while (std::getline(in, line)) {
    std::istringstream row(line);
    std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout;
    unsigned long inode = 0;
    if (!(row >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
          timeout >> inode))
      continue;
    const size_t colon = local.rfind(':');
    if (colon == std::string::npos) continue;
    constexpr const char* kEstablished = "01";
    if (std::strtol(local.c_str() + colon + 1, nullptr, 16) == port && state == kEstablished &&
        inodes.count(inode) > 0)
      ++count;
  }
  return count;
}

}  // namespace

int WaitForClientsToHangUp(int port, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const std::set<unsigned long> inodes = OwnSocketInodes();
    const int open = CountEstablished("/proc/net/tcp", port, inodes) +
                     CountEstablished("/proc/net/tcp6", port, inodes);
    if (open == 0 || std::chrono::steady_clock::now() >= deadline) return open;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace kvguard
