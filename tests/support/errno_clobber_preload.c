// LD_PRELOAD shim that reproduces, on demand, the client failure seen in
// ops_prometheus_scrape on a clean root ("UNAVAILABLE: failed to connect to all
// addresses; last error: UNKNOWN: ipv4:127.0.0.1:PORT: No such file or directory").
//
// Debian's gRPC 1.51 (grpc_tcp_client_create_from_prepared_fd) calls connect()
// on a non-blocking socket, then grpc_sockaddr_to_uri() and grpc_fd_create(),
// and only then reads errno to tell "in progress" from "failed". Any of those
// calls may leave errno changed (POSIX lets successful calls do so; a contended
// absl::Mutex's first slow path probes /sys for the CPU count, which fails with
// ENOENT where /sys is not mounted), and the in-progress connect is then
// reported as failed with that errno. This shim does exactly that to the first
// KVG_CLOBBER_CONNECTS (default 1) in-progress connects: the epoll_ctl(ADD)
// inside grpc_fd_create succeeds but leaves errno = ENOENT. Each clobber
// appends a line to $KVG_CLOBBER_LOG when set.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>

static _Thread_local int g_pending;
static int g_budget;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void ReadBudget(void) {
  const char* s = getenv("KVG_CLOBBER_CONNECTS");
  g_budget = s ? atoi(s) : 1;
}

// Takes one clobber from the budget; 0 when it is spent.
static int TakeOne(void) {
  pthread_once(&g_once, ReadBudget);
  int left = __atomic_load_n(&g_budget, __ATOMIC_SEQ_CST);
  while (left > 0) {
    if (__atomic_compare_exchange_n(&g_budget, &left, left - 1, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      return 1;
  }
  return 0;
}

int connect(int fd, const struct sockaddr* addr, socklen_t len) {
  static int (*real)(int, const struct sockaddr*, socklen_t);
  if (!real) real = (int (*)(int, const struct sockaddr*, socklen_t))dlsym(RTLD_NEXT, "connect");
  const int rc = real(fd, addr, len);
  const int saved = errno;
  if (rc < 0 && saved == EINPROGRESS && TakeOne()) g_pending = 1;
  errno = saved;
  return rc;
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event* event) {
  static int (*real)(int, int, int, struct epoll_event*);
  if (!real) real = (int (*)(int, int, int, struct epoll_event*))dlsym(RTLD_NEXT, "epoll_ctl");
  const int rc = real(epfd, op, fd, event);
  if (rc == 0 && op == EPOLL_CTL_ADD && g_pending) {
    g_pending = 0;
    errno = ENOENT;
    const char* log = getenv("KVG_CLOBBER_LOG");
    FILE* f = log ? fopen(log, "a") : NULL;
    if (f) {
      fprintf(f, "clobbered errno after in-progress connect on fd %d\n", fd);
      fclose(f);
    }
    errno = ENOENT;  // fopen/fclose may have changed it
  }
  return rc;
}
