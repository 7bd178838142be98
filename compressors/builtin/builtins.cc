#include "compressors/builtin/builtins.h"

namespace kvguard::compress {

void RegisterBuiltins(Registry& registry) {
  for (auto info : {KnormInfo(), StreamingLlmInfo(), SnapKvInfo(), PyramidKvInfo(), TovaInfo(),
                    ObservedAttentionInfo(), ExpectedAttentionInfo(), KeyDiffInfo(), Q2cInfo(), KiviInfo(),
                    VectorInfo()}) {
    (void)registry.Register(std::move(info));
  }
}

}  // namespace kvguard::compress
