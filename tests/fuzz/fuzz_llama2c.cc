// Fuzz target: a llama2.c checkpoint (7 int32 header fields, then weights).
// Any file must open with a consistent config or fail cleanly.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "services/engine/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The checkpoint reader maps a path: hand it an in-memory file.
  static const int fd = memfd_create("llama2c", 0);
  if (fd < 0) return 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto ckpt = kvguard::engine::OpenLlama2cCheckpoint(path);
  return 0;
}
