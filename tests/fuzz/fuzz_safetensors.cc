// Fuzz target: a safetensors file (8-byte header length, JSON header, data).
// Every input must give a parsed file or a clean error; views stay in bounds.
#include <cstddef>
#include <cstdint>

#include "services/engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = kvguard::engine::SafetensorsFile::Parse(data, size, "fuzz");
  if (!file.ok()) return 0;
  uint64_t sum = 0;
  for (const auto& [name, view] : (*file)->tensors()) {
    if (view.nbytes == 0) continue;
    sum += view.data[0] + view.data[view.nbytes - 1];  // both ends: ASan checks the bounds
  }
  return sum == 0xFFFFFFFFFFFFFFFFull ? 1 : 0;
}
