// Fuzz target: tokenizer.json. A tokenizer that loads must encode and decode
// arbitrary text without crashing.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "services/engine/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The first 64 bytes (if any) are text to encode, the rest the JSON.
  const size_t split = size < 64 ? size / 2 : 64;
  const std::string text(reinterpret_cast<const char*>(data), split);
  const std::string_view json(reinterpret_cast<const char*>(data) + split, size - split);
  auto tokenizer = kvguard::engine::Tokenizer::FromJson(json);
  if (!tokenizer.ok()) return 0;
  auto ids = (*tokenizer)->Encode(text);
  if (!ids.ok()) return 0;
  (void)(*tokenizer)->Decode(*ids);
  for (int32_t id : *ids) (void)(*tokenizer)->TokenBytes(id);
  return 0;
}
