// File: services/cli/cli_args.h
//
// A small `--name value` / `--flag` parser for the kvguard subcommands.
// Each command declares the options it takes; anything else is an error
// naming the option, so typos never pass silently.
//
//   CliArgs args;
//   KVG_RETURN_IF_ERROR(args.Parse(argc, argv, {"model", "ids"}, {"json"}));
//   std::string model = args.Get("model");
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvguard::cli {

class CliArgs {
 public:
  // `valued`: options that take a value (may repeat); `flags`: boolean switches.
  absl::Status Parse(int argc, char** argv, const std::set<std::string>& valued,
                     const std::set<std::string>& flags);

  [[nodiscard]] bool Has(const std::string& name) const;
  // Last value given, or `fallback`.
  [[nodiscard]] std::string Get(const std::string& name, const std::string& fallback = "") const;
  [[nodiscard]] std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<std::string> Require(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::set<std::string> flags_;
};

// Parses "1,2,3" (spaces allowed) into ids.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text);

}  // namespace kvguard::cli
