// File: compressors/compression_spec.h
//
// What a request asks of compression (torch-free, for request structs).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace kvguard::compress {

struct CompressionSpec {
  std::string compressor;            // registry name; empty = no compression
  std::vector<std::string> options;  // "key=value"
  double ratio = 0.0;                // fraction of KV entries removed, [0, 1)
  int64_t compress_every = 0;        // 0: whenever a layer is over budget; N: every N decode steps
  // Ratio changes during decoding: (decode step, new ratio), applied before that step.
  std::vector<std::pair<int64_t, double>> ratio_schedule;
};

}  // namespace kvguard::compress
