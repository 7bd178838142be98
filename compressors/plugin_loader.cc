#include "compressors/plugin_loader.h"

#include <ATen/ATen.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvguard/compressor_abi.h"

namespace kvguard::compress {
namespace {

using nlohmann::json;
using Vtable = kvg_compressor_vtable_v1;

// --- the adapter: a plugin instance seen as a ScoringCompressor ---

std::string PluginError(const Vtable& vtable) {
  const char* message = vtable.last_error();
  return message != nullptr && *message != '\0' ? message : "(the plugin gave no message)";
}

// A fresh contiguous float32 CPU copy: the plugin gets the layout the ABI
// promises whatever the cache's dtype, device or capacity, and cannot write
// into the live cache through its const pointer.
at::Tensor FloatCopy(const at::Tensor& t) {
  return at::empty(t.sizes(), at::TensorOptions().dtype(at::kFloat)).copy_(t);
}

class CAbiCompressor final : public ScoringCompressor {
 public:
  CAbiCompressor(std::string name, const Vtable* vtable, kvg_compressor_t* handle)
      : name_(std::move(name)), vtable_(vtable), handle_(handle) {}
  ~CAbiCompressor() override { vtable_->destroy(handle_); }
  CAbiCompressor(const CAbiCompressor&) = delete;
  CAbiCompressor& operator=(const CAbiCompressor&) = delete;

  const std::string& name() const override { return name_; }

  absl::StatusOr<at::Tensor> Score(const CompressContext& ctx, int64_t layer,
                                   int64_t n_keep) override {
    const engine::SequenceKvCache& cache = *ctx.cache;
    const at::Tensor keys = FloatCopy(cache.Keys(layer));
    const at::Tensor values = FloatCopy(cache.Values(layer));
    const int64_t kv_heads = keys.size(0), slots = keys.size(1);
    std::vector<int32_t> positions;
    positions.reserve(kv_heads * slots);
    for (const auto& head : cache.Positions(layer)) {
      positions.insert(positions.end(), head.begin(), head.end());
    }
    const kvg_layer_view view{.struct_size = sizeof(kvg_layer_view),
                              .reserved = 0,
                              .layer = layer,
                              .num_layers = ctx.config->num_layers,
                              .num_kv_heads = kv_heads,
                              .num_heads = ctx.config->num_heads,
                              .head_dim = keys.size(2),
                              .num_slots = slots,
                              .num_positions = cache.num_positions(),
                              .n_keep = n_keep,
                              .ratio = ctx.ratio,
                              .keys = keys.data_ptr<float>(),
                              .values = values.data_ptr<float>(),
                              .positions = positions.data()};
    // NaN ranks last in TopKPlan: slots a buggy plugin leaves unwritten are
    // evicted first instead of being ranked by leftover memory.
    at::Tensor scores = at::full({kv_heads, slots}, NAN, at::TensorOptions().dtype(at::kFloat));
    if (vtable_->score(handle_, &view, scores.data_ptr<float>()) != KVG_OK) {
      return absl::InternalError(absl::StrCat("compressor '", name_, "' failed on layer ", layer,
                                              ": ", PluginError(*vtable_)));
    }
    return scores;
  }

 private:
  std::string name_;
  const Vtable* vtable_;
  kvg_compressor_t* handle_;
};

// Validated options -> the typed JSON object create() receives.
std::string ConfigJson(const OptionValues& values) {
  json config = json::object();
  for (const auto& [name, value] : values.values()) {
    std::visit([&](const auto& v) { config[name] = v; }, value);
  }
  return config.dump();
}

absl::StatusOr<std::unique_ptr<Compressor>> CreateInstance(const std::string& name,
                                                           const Vtable* vtable,
                                                           const OptionValues& values) {
  kvg_compressor_t* handle = nullptr;
  if (vtable->create(ConfigJson(values).c_str(), &handle) != KVG_OK) {
    return absl::InternalError(
        absl::StrCat("compressor '", name, "' could not be created: ", PluginError(*vtable)));
  }
  if (handle == nullptr) {
    return absl::InternalError(
        absl::StrCat("compressor '", name, "': create() returned no handle"));
  }
  return std::make_unique<CAbiCompressor>(name, vtable, handle);
}

// --- options_json ---

absl::StatusOr<OptionType> ParseOptionType(const json& type) {
  static const std::map<std::string, OptionType> kTypes = {{"int", OptionType::kInt},
                                                           {"double", OptionType::kDouble},
                                                           {"bool", OptionType::kBool},
                                                           {"string", OptionType::kString}};
  auto it = type.is_string() ? kTypes.find(type.get<std::string>()) : kTypes.end();
  if (it == kTypes.end()) {
    return absl::InvalidArgumentError(
        "\"type\" must be \"int\", \"double\", \"bool\" or \"string\"");
  }
  return it->second;
}

absl::StatusOr<OptionValue> ParseOptionDefault(OptionType type, const json& value) {
  switch (type) {
    case OptionType::kInt:
      if (value.is_number_integer()) return OptionValue(value.get<int64_t>());
      break;
    case OptionType::kDouble:
      if (value.is_number()) return OptionValue(value.get<double>());
      break;
    case OptionType::kBool:
      if (value.is_boolean()) return OptionValue(value.get<bool>());
      break;
    case OptionType::kString:
      if (value.is_string()) return OptionValue(value.get<std::string>());
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"default\" must be a JSON ", OptionTypeName(type), ", got ", value.dump()));
}

// Fills spec.min/max (optional; numbers only) and checks the default fits.
absl::Status ParseOptionBounds(const json& entry, OptionSpec& spec) {
  if (spec.type == OptionType::kBool) {
    spec.max = 1;
    return absl::OkStatus();
  }
  if (spec.type == OptionType::kString) return absl::OkStatus();
  // Int bounds stay within 2^53, exact both as double and as int64_t.
  const double limit =
      spec.type == OptionType::kInt ? 9007199254740992.0 : std::numeric_limits<double>::max();
  spec.min = -limit;
  spec.max = limit;
  for (auto [key, bound] : {std::pair{"min", &spec.min}, std::pair{"max", &spec.max}}) {
    if (!entry.contains(key)) continue;
    const json& v = entry[key];
    if (spec.type == OptionType::kInt ? !v.is_number_integer() : !v.is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", key, "\" must be a ", OptionTypeName(spec.type)));
    }
    *bound = std::clamp(v.get<double>(), -limit, limit);
  }
  const double def = spec.type == OptionType::kInt ? double(std::get<int64_t>(spec.default_value))
                                                   : std::get<double>(spec.default_value);
  if (!(spec.min <= def && def <= spec.max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"default\" ", def, " is outside [", spec.min, ", ", spec.max, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<OptionSpec> ParseOptionSpec(const json& entry) {
  if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() ||
      entry["name"].get<std::string>().empty()) {
    return absl::InvalidArgumentError("every option needs a non-empty string \"name\"");
  }
  OptionSpec spec;
  spec.name = entry["name"].get<std::string>();
  auto fail = [&](const absl::Status& s) {
    return absl::InvalidArgumentError(absl::StrCat("option '", spec.name, "': ", s.message()));
  };
  // The CLI's key=value syntax splits at the first '='.
  if (spec.name.find('=') != std::string::npos) {
    return fail(absl::InvalidArgumentError("'=' in the name"));
  }
  auto type = ParseOptionType(entry.value("type", json()));
  if (!type.ok()) return fail(type.status());
  spec.type = *type;
  auto def = ParseOptionDefault(spec.type, entry.value("default", json()));
  if (!def.ok()) return fail(def.status());
  spec.default_value = *def;
  if (auto s = ParseOptionBounds(entry, spec); !s.ok()) return fail(s);
  const json help = entry.value("help", json(""));
  if (!help.is_string()) return fail(absl::InvalidArgumentError("\"help\" must be a string"));
  spec.help = help.get<std::string>();
  return spec;
}

// --- the library ---

struct LibraryCloser {
  void operator()(void* handle) const { dlclose(handle); }
};
using Library = std::unique_ptr<void, LibraryCloser>;

std::string DlError() {
  const char* error = dlerror();
  return error != nullptr ? error : "unknown dlopen error";
}

absl::StatusOr<Library> OpenLibrary(const std::string& path) {
  // RTLD_NOW: unresolved symbols fail here, not mid-generation.
  // RTLD_LOCAL: two plugins' internal symbols never bind to each other.
  Library library(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (library != nullptr) return library;
  const std::string message =
      absl::StrCat("cannot load compressor plugin '", path, "': ", DlError());
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return absl::NotFoundError(message);
  return absl::InvalidArgumentError(message);
}

template <typename Fn>
absl::StatusOr<Fn> LookUp(void* library, const char* symbol, const std::string& path) {
  dlerror();  // clear any stale error
  void* address = dlsym(library, symbol);
  if (address == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' is not a kvguard compressor plugin: no symbol ", symbol, " (",
                     DlError(), ")"));
  }
  return reinterpret_cast<Fn>(address);
}

absl::Status CheckVtable(const Vtable* vtable, const std::string& path) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("compressor plugin '", path, "': ", why));
  };
  if (vtable == nullptr) return bad("kvg_plugin_get_compressor_v1() returned NULL");
  if (vtable->struct_size < sizeof(Vtable)) {
    return bad(absl::StrCat("vtable struct_size ", vtable->struct_size,
                            " is smaller than the v1 vtable (", sizeof(Vtable), " bytes)"));
  }
  if (vtable->name == nullptr || *vtable->name == '\0') return bad("the vtable has no name");
  const std::pair<const char*, bool> functions[] = {{"create", vtable->create != nullptr},
                                                    {"destroy", vtable->destroy != nullptr},
                                                    {"score", vtable->score != nullptr},
                                                    {"last_error", vtable->last_error != nullptr}};
  for (const auto& [field, present] : functions) {
    if (!present) return bad(absl::StrCat("the vtable's ", field, " is NULL"));
  }
  return absl::OkStatus();
}

absl::StatusOr<const Vtable*> ResolveVtable(void* library, const std::string& path) {
  KVG_ASSIGN_OR_RETURN(auto abi_version, LookUp<kvg_plugin_abi_version_fn>(
                                             library, KVG_PLUGIN_ABI_VERSION_SYMBOL, path));
  // Checked before anything else is touched: other versions may lay out
  // (or even name) the vtable differently.
  const uint32_t version = abi_version();
  if (version != KVG_PLUGIN_ABI_VERSION) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressor plugin '", path, "' was built for plugin ABI version ", version,
                     ", but this kvguard supports version ", KVG_PLUGIN_ABI_VERSION,
                     " (rebuild it against this kvguard's kvguard/compressor_abi.h)"));
  }
  KVG_ASSIGN_OR_RETURN(
      auto get_compressor,
      LookUp<kvg_plugin_get_compressor_v1_fn>(library, KVG_PLUGIN_GET_COMPRESSOR_V1_SYMBOL, path));
  const Vtable* vtable = get_compressor();
  KVG_RETURN_IF_ERROR(CheckVtable(vtable, path));
  return vtable;
}

absl::StatusOr<CompressorInfo> DescribePlugin(const Vtable* vtable, const std::string& path) {
  auto options = ParsePluginOptionsJson(vtable->options_json ? vtable->options_json : "");
  if (!options.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "compressor plugin '", path, "': bad options_json: ", options.status().message()));
  }
  std::string name = vtable->name;
  return CompressorInfo{
      .name = name,
      .description = vtable->description ? vtable->description : "",
      .options = std::move(*options),
      .factory = [name, vtable](
                     const OptionValues& values) { return CreateInstance(name, vtable, values); },
      .origin = path};
}

}  // namespace

absl::StatusOr<std::vector<OptionSpec>> ParsePluginOptionsJson(std::string_view text) {
  std::vector<OptionSpec> specs;
  if (text.empty()) return specs;
  const json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_array()) {
    return absl::InvalidArgumentError(
        "expected a JSON array of {name, type, default, min, max, help}");
  }
  std::set<std::string> seen;
  for (const json& entry : doc) {
    KVG_ASSIGN_OR_RETURN(OptionSpec spec, ParseOptionSpec(entry));
    if (!seen.insert(spec.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("option '", spec.name, "' is declared twice"));
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

absl::Status LoadCompressorPlugin(const std::string& path, Registry& registry) {
  KVG_ASSIGN_OR_RETURN(Library library, OpenLibrary(path));
  KVG_ASSIGN_OR_RETURN(const Vtable* vtable, ResolveVtable(library.get(), path));
  KVG_ASSIGN_OR_RETURN(CompressorInfo info, DescribePlugin(vtable, path));
  if (absl::Status s = registry.Register(std::move(info)); !s.ok()) {
    // Closing here is safe: nothing was created from this load (a second
    // load of the same file only drops the extra reference dlopen took).
    return absl::Status(s.code(), absl::StrCat(s.message(), " (loading '", path, "')"));
  }
  // Never closed from here on: the registry's factory and every compressor
  // it creates call into the library for the rest of the process.
  library.release();
  return absl::OkStatus();
}

absl::Status LoadCompressorPluginFromDir(const std::string& dir, const std::string& name,
                                         Registry& registry) {
  namespace fs = std::filesystem;
  if (dir.empty())
    return absl::PermissionDeniedError("compressor plugins load only from --plugin_dir; none set");
  std::error_code ec;
  const fs::path root = fs::canonical(dir, ec);
  if (ec || !fs::is_directory(root))
    return absl::NotFoundError(absl::StrCat("plugin directory '", dir, "' does not exist"));
  const fs::path wanted = fs::path(name).is_absolute() ? fs::path(name) : root / name;
  const fs::path file = fs::canonical(wanted, ec);
  if (ec)
    return absl::NotFoundError(absl::StrCat("plugin '", name, "' not found in ", root.string()));
  const auto [root_end, file_it] =
      std::mismatch(root.begin(), root.end(), file.begin(), file.end());
  if (root_end != root.end() || file_it == file.end() || !fs::is_regular_file(file)) {
    return absl::PermissionDeniedError(absl::StrCat("plugin '", name, "' resolves to ",
                                                    file.string(), ", outside ", root.string()));
  }
  return LoadCompressorPlugin(file.string(), registry);
}

}  // namespace kvguard::compress
