// File: compressors/builtin/builtins.h
//
// One CompressorInfo per built-in compressor (one file each in builtin/).
#pragma once

#include "compressors/registry.h"

namespace kvguard::compress {

CompressorInfo KnormInfo();
CompressorInfo StreamingLlmInfo();
CompressorInfo SnapKvInfo();
CompressorInfo PyramidKvInfo();
CompressorInfo TovaInfo();
CompressorInfo ObservedAttentionInfo();
CompressorInfo ExpectedAttentionInfo();
CompressorInfo KeyDiffInfo();
CompressorInfo Q2cInfo();
CompressorInfo KiviInfo();
CompressorInfo VectorInfo();

}  // namespace kvguard::compress
