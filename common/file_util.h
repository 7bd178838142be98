// File: common/file_util.h
//
// Small file helpers shared by the loaders: whole-file reads and a read-only
// memory map that unmaps itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace kvguard {

// Reads a whole (small) file, such as config.json, into a string.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// A read-only private mapping of a whole file. Movable, not copyable.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  [[nodiscard]] const uint8_t* data() const { return data_; }
  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

bool IsDirectory(const std::string& path);
bool FileExists(const std::string& path);

}  // namespace kvguard
