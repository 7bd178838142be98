// `kvguard compressors`: every registered compressor with its options.
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/status_macros.h"
#include "compressors/plugin_loader.h"
#include "compressors/registry.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"

namespace kvguard::cli {

absl::Status RunCompressors(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(args.Parse(argc, argv, {"plugin"}, {}));
  for (const std::string& path : args.GetAll("plugin")) {
    KVG_RETURN_IF_ERROR(compress::LoadCompressorPlugin(path, compress::Registry::Global()));
  }
  nlohmann::json list = nlohmann::json::array();
  for (const auto& info : compress::Registry::Global().List()) {
    nlohmann::json options = nlohmann::json::array();
    for (const auto& o : info.options) {
      nlohmann::json opt = {{"name", o.name}, {"type", compress::OptionTypeName(o.type)}, {"help", o.help}};
      std::visit([&](const auto& v) { opt["default"] = v; }, o.default_value);
      if (o.type == compress::OptionType::kInt || o.type == compress::OptionType::kDouble) {
        opt["min"] = o.min;
        opt["max"] = o.max;
      }
      options.push_back(opt);
    }
    list.push_back({{"name", info.name}, {"description", info.description}, {"origin", info.origin},
                    {"options", options}});
  }
  std::cout << nlohmann::json{{"compressors", list}}.dump(2) << "\n";
  return absl::OkStatus();
}

}  // namespace kvguard::cli
