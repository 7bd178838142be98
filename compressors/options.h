// File: compressors/options.h
//
// Named, typed, validated compressor options. Each compressor declares its
// options (name, type, default, range, help); user input ("key=value"
// strings from the CLI, a map from the gRPC request, JSON from a plugin
// config) is checked against them, so a typo or an out-of-range value is a
// clear InvalidArgument naming the option.
//
//   const std::vector<OptionSpec> kSpecs = {
//       IntOption("window_size", 64, 1, 1 << 20, "queries in the observation window")};
//   KVG_ASSIGN_OR_RETURN(OptionValues v, ParseOptions("snapkv", kSpecs, {"window_size=8"}));
//   int64_t w = v.Int("window_size");
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace kvguard::compress {

enum class OptionType { kInt, kDouble, kBool, kString };

using OptionValue = std::variant<int64_t, double, bool, std::string>;

struct OptionSpec {
  std::string name;
  OptionType type = OptionType::kInt;
  OptionValue default_value;
  double min = 0;  // inclusive bounds for numbers
  double max = 0;
  std::string help;
};

OptionSpec IntOption(std::string name, int64_t def, int64_t min, int64_t max, std::string help);
OptionSpec DoubleOption(std::string name, double def, double min, double max, std::string help);
OptionSpec BoolOption(std::string name, bool def, std::string help);
OptionSpec StringOption(std::string name, std::string def, std::string help);

const char* OptionTypeName(OptionType type);

// Validated values: every declared option has a value (given or default).
class OptionValues {
 public:
  [[nodiscard]] int64_t Int(const std::string& name) const;
  [[nodiscard]] double Double(const std::string& name) const;
  [[nodiscard]] bool Bool(const std::string& name) const;
  [[nodiscard]] const std::string& String(const std::string& name) const;
  void Set(const std::string& name, OptionValue value) { values_[name] = std::move(value); }
  [[nodiscard]] const std::map<std::string, OptionValue>& values() const { return values_; }

 private:
  std::map<std::string, OptionValue> values_;
};

// `given`: "key=value" strings. Unknown keys, unparsable or out-of-range
// values fail with a message naming `compressor` and the option.
absl::StatusOr<OptionValues> ParseOptions(const std::string& compressor,
                                          const std::vector<OptionSpec>& specs,
                                          const std::vector<std::string>& given);
absl::StatusOr<OptionValues> ParseOptions(const std::string& compressor,
                                          const std::vector<OptionSpec>& specs,
                                          const std::map<std::string, std::string>& given);

// Renders a value for JSON/help ("64", "0.5", "true", "text").
std::string OptionValueToString(const OptionValue& value);

}  // namespace kvguard::compress
