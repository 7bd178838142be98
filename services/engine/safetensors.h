// File: services/engine/safetensors.h
//
// A reader for the safetensors format that treats the file as untrusted input:
// the file is memory-mapped, and every header field (dtype, shape, data
// offsets) is validated against the file before any tensor view is handed out.
// Bad files produce an absl::Status naming the file and the problem; never a
// crash.
//
//   KVG_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open("model.safetensors"));
//   const TensorView* w = file->Find("model.embed_tokens.weight");
//   // w->dtype, w->shape, w->data (points into the mapping; valid while `file` lives)
//
// Sharded checkpoints (model.safetensors.index.json) are read with
// SafetensorsCheckpoint, which opens every shard named by the index.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/file_util.h"

namespace kvguard::engine {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element; e.g. 4 for kF32.
size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "BF16", ...
const char* DTypeName(DType dtype);

// A borrowed, validated view of one tensor's bytes inside a mapped file.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // little-endian, row-major, numel() * DTypeSize(dtype) bytes
  size_t nbytes = 0;

  [[nodiscard]] int64_t numel() const;
};

// One .safetensors file. Validation done by Open():
//  - header length fits in the file; header is a JSON object;
//  - each entry has a known dtype, a shape of non-negative ints, and
//    data_offsets [begin, end] with begin <= end <= data size;
//  - end - begin == numel * dtype size (no overflow);
//  - no two tensors' byte ranges overlap.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses an in-memory buffer (used by tests and by Open). `buffer` must
  // outlive the returned object. `name` is used in error messages.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(const uint8_t* buffer,
                                                                size_t size,
                                                                const std::string& name);

  // nullptr when absent.
  [[nodiscard]] const TensorView* Find(const std::string& name) const;
  [[nodiscard]] const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::unique_ptr<MappedFile> mapping_;  // null when parsed from a caller's buffer
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory's weights: either `model.safetensors` or the shards
// listed in `model.safetensors.index.json` (its "weight_map"). A tensor named
// in the index but missing from its shard is an error.
class SafetensorsCheckpoint {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> OpenDir(const std::string& dir);

  [[nodiscard]] const TensorView* Find(const std::string& name) const;
  [[nodiscard]] std::vector<std::string> Names() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace kvguard::engine
