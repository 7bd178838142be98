// File: compressors/plugin_loader.h
//
// Loads external compressors: shared libraries built against the C ABI in
// compressors/include/kvguard/compressor_abi.h. The library's ABI version
// and vtable are checked, its options_json becomes OptionSpecs, and the
// compressor is registered (origin = the path) like a built-in.
//
//   KVG_RETURN_IF_ERROR(LoadCompressorPlugin("build/lib/libkvg_example_recent.so",
//                                            Registry::Global()));
//   KVG_ASSIGN_OR_RETURN(auto c, Registry::Global().Create("example_recent", {"bonus_sinks=2"}));
//
// Loaded libraries stay loaded for the life of the process: compressors made
// from them may live anywhere, so unloading could never be proven safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "compressors/options.h"
#include "compressors/registry.h"

namespace kvguard::compress {

// NotFound for a missing file; InvalidArgument (naming the path) for a file
// that is not a loadable, compatible plugin; AlreadyExists when the
// compressor's name is taken in `registry` (e.g. the same plugin twice).
absl::Status LoadCompressorPlugin(const std::string& path, Registry& registry);

// The server's way in: `name` (a file name, or a path) must resolve, after
// symlinks, to a file inside `dir`; anything else is PERMISSION_DENIED, so
// a flag or config can never make the server dlopen code from elsewhere.
absl::Status LoadCompressorPluginFromDir(const std::string& dir, const std::string& name,
                                         Registry& registry);

// Parses a plugin's options_json (a JSON array of {name, type, default, min,
// max, help}). Exposed for tests.
absl::StatusOr<std::vector<OptionSpec>> ParsePluginOptionsJson(std::string_view text);

}  // namespace kvguard::compress
