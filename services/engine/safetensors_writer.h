// File: services/engine/safetensors_writer.h
//
// Writes a .safetensors file (the layout SafetensorsFile reads): tensors in
// name order, data 8-byte aligned, optional string metadata. The file is
// written next to its destination and renamed into place, so readers never
// see a half-written file.
//
//   TensorData t{.dtype = DType::kF32, .shape = {2, 3}, .bytes = raw_bytes};
//   KVG_RETURN_IF_ERROR(WriteSafetensors("out.safetensors", {{"w", t}}, {{"note", "x"}}));
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "services/engine/safetensors.h"

namespace kvguard::engine {

struct TensorData {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;  // little-endian, row-major; numel * DTypeSize(dtype) bytes
};

// InvalidArgument when a tensor's bytes do not match its shape or a name is
// empty or reserved; Internal/PermissionDenied-style errors on I/O failure.
absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, TensorData>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace kvguard::engine
