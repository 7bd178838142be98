// File: compressors/registry.h
//
// Compressors by name. Built-ins register themselves; external plugins are
// added by LoadCompressorPlugin (plugin_loader.h). Options are validated against each
// compressor's declared specs before its factory runs.
//
//   KVG_ASSIGN_OR_RETURN(auto c, Registry::Global().Create("snapkv", {"window_size=8"}));
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressors/compressor.h"
#include "compressors/options.h"

namespace kvguard::compress {

struct CompressorInfo {
  std::string name;
  std::string description;  // one line: the method and its source
  std::vector<OptionSpec> options;
  std::function<absl::StatusOr<std::unique_ptr<Compressor>>(const OptionValues&)> factory;
  std::string origin = "builtin";  // or the plugin's path
};

class Registry {
 public:
  static Registry& Global();

  // AlreadyExists when the name is taken.
  absl::Status Register(CompressorInfo info);
  absl::StatusOr<std::unique_ptr<Compressor>> Create(const std::string& name,
                                                     const std::vector<std::string>& options) const;
  absl::StatusOr<std::unique_ptr<Compressor>> Create(
      const std::string& name, const std::map<std::string, std::string>& options) const;
  [[nodiscard]] std::vector<CompressorInfo> List() const;  // sorted by name
  [[nodiscard]] bool Has(const std::string& name) const;

 private:
  absl::StatusOr<const CompressorInfo*> Find(const std::string& name) const;
  mutable std::mutex mu_;
  std::map<std::string, CompressorInfo> infos_;
};

// Registers every built-in compressor once (idempotent; called by Global()).
void RegisterBuiltins(Registry& registry);

}  // namespace kvguard::compress
