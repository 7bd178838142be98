// Fuzz target: a Hugging Face config.json (and generation_config.json merged
// into it): a ModelConfig whose sizes are consistent, or a clean error.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "services/engine/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = kvguard::engine::ParseHfConfig(text);
  if (!config.ok()) return 0;
  (void)kvguard::engine::MergeGenerationConfig(text, *config);
  return 0;
}
