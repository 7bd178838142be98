#include "compressors/options.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvguard::compress {

OptionSpec IntOption(std::string name, int64_t def, int64_t min, int64_t max, std::string help) {
  return {std::move(name), OptionType::kInt, def, double(min), double(max), std::move(help)};
}
OptionSpec DoubleOption(std::string name, double def, double min, double max, std::string help) {
  return {std::move(name), OptionType::kDouble, def, min, max, std::move(help)};
}
OptionSpec BoolOption(std::string name, bool def, std::string help) {
  return {std::move(name), OptionType::kBool, def, 0, 1, std::move(help)};
}
OptionSpec StringOption(std::string name, std::string def, std::string help) {
  return {std::move(name), OptionType::kString, std::move(def), 0, 0, std::move(help)};
}

const char* OptionTypeName(OptionType type) {
  switch (type) {
    case OptionType::kInt: return "int";
    case OptionType::kDouble: return "double";
    case OptionType::kBool: return "bool";
    case OptionType::kString: return "string";
  }
  return "?";
}

int64_t OptionValues::Int(const std::string& name) const {
  auto it = values_.find(name);
  KVG_CHECK(it != values_.end() && std::holds_alternative<int64_t>(it->second)) << name;
  return std::get<int64_t>(it->second);
}
double OptionValues::Double(const std::string& name) const {
  auto it = values_.find(name);
  KVG_CHECK(it != values_.end() && std::holds_alternative<double>(it->second)) << name;
  return std::get<double>(it->second);
}
bool OptionValues::Bool(const std::string& name) const {
  auto it = values_.find(name);
  KVG_CHECK(it != values_.end() && std::holds_alternative<bool>(it->second)) << name;
  return std::get<bool>(it->second);
}
const std::string& OptionValues::String(const std::string& name) const {
  auto it = values_.find(name);
  KVG_CHECK(it != values_.end() && std::holds_alternative<std::string>(it->second)) << name;
  return std::get<std::string>(it->second);
}

namespace {

absl::StatusOr<OptionValue> ParseValue(const std::string& compressor, const OptionSpec& spec,
                                       const std::string& text) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("compressor '", compressor, "': option '",
                                                   spec.name, "': ", why, " (got '", text, "')"));
  };
  switch (spec.type) {
    case OptionType::kInt: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("expects an integer");
      if (v < spec.min || v > spec.max) {
        return bad(absl::StrCat("must be in [", int64_t(spec.min), ", ", int64_t(spec.max), "]"));
      }
      return OptionValue(v);
    }
    case OptionType::kDouble: {
      double v;
      if (!absl::SimpleAtod(text, &v) || !std::isfinite(v)) return bad("expects a number");
      if (v < spec.min || v > spec.max) return bad(absl::StrCat("must be in [", spec.min, ", ", spec.max, "]"));
      return OptionValue(v);
    }
    case OptionType::kBool: {
      bool v;
      if (!absl::SimpleAtob(text, &v)) return bad("expects true or false");
      return OptionValue(v);
    }
    case OptionType::kString:
      return OptionValue(text);
  }
  return bad("unknown type");
}

}  // namespace

absl::StatusOr<OptionValues> ParseOptions(const std::string& compressor,
                                          const std::vector<OptionSpec>& specs,
                                          const std::map<std::string, std::string>& given) {
  OptionValues values;
  for (const OptionSpec& spec : specs) values.Set(spec.name, spec.default_value);
  for (const auto& [key, text] : given) {
    const OptionSpec* spec = nullptr;
    for (const OptionSpec& s : specs) {
      if (s.name == key) spec = &s;
    }
    if (spec == nullptr) {
      std::string known;
      for (const OptionSpec& s : specs) absl::StrAppend(&known, known.empty() ? "" : ", ", s.name);
      return absl::InvalidArgumentError(absl::StrCat("compressor '", compressor, "' has no option '", key,
                                                     "' (options: ", known.empty() ? "none" : known, ")"));
    }
    auto value = ParseValue(compressor, *spec, text);
    if (!value.ok()) return value.status();
    values.Set(key, *value);
  }
  return values;
}

absl::StatusOr<OptionValues> ParseOptions(const std::string& compressor,
                                          const std::vector<OptionSpec>& specs,
                                          const std::vector<std::string>& given) {
  std::map<std::string, std::string> pairs;
  for (const std::string& kv : given) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("compressor option '", kv, "' must look like key=value"));
    }
    pairs[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return ParseOptions(compressor, specs, pairs);
}

std::string OptionValueToString(const OptionValue& value) {
  if (auto* i = std::get_if<int64_t>(&value)) return absl::StrCat(*i);
  if (auto* d = std::get_if<double>(&value)) return absl::StrCat(*d);
  if (auto* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  return std::get<std::string>(value);
}

}  // namespace kvguard::compress
