// Helpers shared by the engine tests: fixture paths and reference tensors.
#pragma once

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "services/engine/safetensors.h"

namespace kvguard::testing {

inline std::string DataPath(const std::string& rel) { return std::string(KVG_TEST_DATA_DIR) + "/" + rel; }
inline std::string ModelsPath(const std::string& rel) { return std::string(KVG_MODELS_DIR) + "/" + rel; }

template <typename T>
std::vector<T> ReadAs(const engine::TensorView& v) {
  std::vector<T> out(v.numel());
  std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

// A fresh temporary directory removed at scope exit.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/kvg_test_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace kvguard::testing
