// External compressor plugins: loading the in-tree example through the C ABI,
// running it on a real cache, the loader's refusals, the plugin SDK, and the
// kvguard CLI's --plugin option end to end.
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "compressors/plugin_loader.h"
#include "compressors/registry.h"
#include "kvguard/compressor_abi.h"
#include "kvguard/compressor_plugin_sdk.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::compress {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

const std::string kRecentPlugin = KVG_EXAMPLE_RECENT_PLUGIN;
constexpr char kBadAbiPlugin[] = KVG_EXAMPLE_BAD_ABI_PLUGIN;

const CompressorInfo* FindInfo(const std::vector<CompressorInfo>& infos, const std::string& name) {
  for (const auto& info : infos) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

// A one-layer cache: 2 kv heads, head_dim 4, positions 0..9.
std::unique_ptr<engine::SequenceKvCache> TenPositionCache() {
  auto cache = std::make_unique<engine::SequenceKvCache>(
      engine::KvCacheOptions{.num_layers = 1, .num_kv_heads = 2, .head_dim = 4});
  cache->AppendTokenIds(std::vector<int32_t>(10, 7));
  at::Tensor k = at::randn({2, 10, 4});
  cache->Append(0, k, k * 2, /*first_position=*/0);
  return cache;
}

engine::ModelConfig TinyConfig() {
  engine::ModelConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 2;
  config.num_heads = 2;
  config.head_dim = 4;
  return config;
}

// Kept original positions per kv head after planning layer 0 at `ratio`.
std::vector<std::vector<int32_t>> KeptPositions(Compressor& c, const engine::SequenceKvCache& cache,
                                                double ratio) {
  const engine::ModelConfig config = TinyConfig();
  const CompressContext ctx{.config = &config, .cache = &cache, .ratio = ratio};
  auto plan = c.Plan(ctx, 0);
  EXPECT_TRUE(plan.ok()) << plan.status();
  std::vector<std::vector<int32_t>> kept(2);
  if (!plan.ok() || plan->keep_all) return kept;
  for (int h = 0; h < 2; ++h) {
    for (int64_t slot : plan->keep[h]) kept[h].push_back(cache.Positions(0)[h][slot]);
  }
  return kept;
}

TEST(PluginLoaderTest, RegistersTheExampleWithItsOptions) {
  Registry registry;
  ASSERT_TRUE(LoadCompressorPlugin(kRecentPlugin, registry).ok());
  const auto infos = registry.List();
  const CompressorInfo* info = FindInfo(infos, "example_recent");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->origin, kRecentPlugin);
  EXPECT_THAT(info->description, HasSubstr("recent"));
  ASSERT_EQ(info->options.size(), 1u);
  const OptionSpec& sinks = info->options[0];
  EXPECT_EQ(sinks.name, "bonus_sinks");
  EXPECT_EQ(sinks.type, OptionType::kInt);
  EXPECT_EQ(std::get<int64_t>(sinks.default_value), 0);
  EXPECT_EQ(sinks.min, 0);
  EXPECT_EQ(sinks.max, 1048576);
  EXPECT_FALSE(sinks.help.empty());
}

TEST(PluginLoaderTest, KeepsSinksAndMostRecentOnARealCache) {
  Registry registry;
  ASSERT_TRUE(LoadCompressorPlugin(kRecentPlugin, registry).ok());
  auto compressor = registry.Create("example_recent", std::vector<std::string>{"bonus_sinks=2"});
  ASSERT_TRUE(compressor.ok()) << compressor.status();
  EXPECT_EQ((*compressor)->name(), "example_recent");
  auto cache = TenPositionCache();
  // Budget int(10 * 0.5) = 5: sinks 0, 1 (+inf), then the three newest.
  const std::vector<int32_t> expected = {0, 1, 7, 8, 9};
  const auto kept = KeptPositions(**compressor, *cache, 0.5);
  EXPECT_EQ(kept[0], expected);
  EXPECT_EQ(kept[1], expected);

  auto plain = registry.Create("example_recent", std::vector<std::string>{});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(KeptPositions(**plain, *cache, 0.5)[1], (std::vector<int32_t>{5, 6, 7, 8, 9}));
}

TEST(PluginLoaderTest, ScoresArePositionsWithInfiniteSinks) {
  Registry registry;
  ASSERT_TRUE(LoadCompressorPlugin(kRecentPlugin, registry).ok());
  auto compressor = registry.Create("example_recent", std::vector<std::string>{"bonus_sinks=3"});
  ASSERT_TRUE(compressor.ok()) << compressor.status();
  auto* scorer = dynamic_cast<ScoringCompressor*>(compressor->get());
  ASSERT_NE(scorer, nullptr);
  auto cache = TenPositionCache();
  const engine::ModelConfig config = TinyConfig();
  auto scores = scorer->Score({.config = &config, .cache = cache.get(), .ratio = 0.5}, 0, 5);
  ASSERT_TRUE(scores.ok()) << scores.status();
  ASSERT_EQ(scores->sizes(), (std::vector<int64_t>{2, 10}));
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t t = 0; t < 10; ++t) {
      const float s = (*scores)[h][t].item<float>();
      if (t < 3) {
        EXPECT_TRUE(std::isinf(s) && s > 0) << t;
      } else {
        EXPECT_EQ(s, static_cast<float>(t));
      }
    }
  }
}

TEST(PluginLoaderTest, UnknownOrOutOfRangeOptionIsNamed) {
  Registry registry;
  ASSERT_TRUE(LoadCompressorPlugin(kRecentPlugin, registry).ok());
  auto typo = registry.Create("example_recent", std::vector<std::string>{"bonus_sink=2"});
  ASSERT_FALSE(typo.ok());
  EXPECT_EQ(typo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(typo.status().message(), HasSubstr("'bonus_sink'"));
  auto negative = registry.Create("example_recent", std::vector<std::string>{"bonus_sinks=-1"});
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(negative.status().message(), HasSubstr("bonus_sinks"));
}

TEST(PluginLoaderTest, RefusesAnotherAbiVersion) {
  Registry registry;
  const absl::Status s = LoadCompressorPlugin(kBadAbiPlugin, registry);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("version 999"));
  EXPECT_THAT(s.message(), HasSubstr("supports version 1"));
  EXPECT_THAT(s.message(), HasSubstr(kBadAbiPlugin));
  EXPECT_TRUE(registry.List().empty());
}

TEST(PluginLoaderTest, MissingFileOrNonLibraryIsACleanError) {
  Registry registry;
  absl::Status s = LoadCompressorPlugin("/nonexistent/libkvg_nope.so", registry);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/libkvg_nope.so"));
  kvguard::testing::TempDir tmp;
  kvguard::testing::WriteFile(tmp.File("fake.so"), "not an ELF file");
  s = LoadCompressorPlugin(tmp.File("fake.so"), registry);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(tmp.File("fake.so")));
}

TEST(PluginLoaderTest, LoadingTwiceIsAlreadyExistsAndTheFirstStillWorks) {
  Registry registry;
  ASSERT_TRUE(LoadCompressorPlugin(kRecentPlugin, registry).ok());
  const absl::Status again = LoadCompressorPlugin(kRecentPlugin, registry);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.message(), HasSubstr("example_recent"));
  auto compressor = registry.Create("example_recent", std::vector<std::string>{"bonus_sinks=2"});
  ASSERT_TRUE(compressor.ok()) << compressor.status();
  auto cache = TenPositionCache();
  EXPECT_EQ(KeptPositions(**compressor, *cache, 0.5)[0], (std::vector<int32_t>{0, 1, 7, 8, 9}));
}

// The server loads plugins only from --plugin_dir: a name inside it loads; a
// path or symlink that leads outside, or no directory at all, is refused.
TEST(PluginLoaderTest, FromDirLoadsOnlyFilesInsideTheDirectory) {
  const std::string plugin_dir = kRecentPlugin.substr(0, kRecentPlugin.rfind('/'));
  const std::string file = kRecentPlugin.substr(kRecentPlugin.rfind('/') + 1);
  kvguard::testing::TempDir tmp;
  std::filesystem::create_symlink(kRecentPlugin, tmp.File("escape.so"));
  Registry outside;
  absl::Status s = LoadCompressorPluginFromDir(tmp.path(), "escape.so", outside);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("outside"));
  s = LoadCompressorPluginFromDir(tmp.path(), kRecentPlugin, outside);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  s = LoadCompressorPluginFromDir(tmp.path(), "../" + file, outside);
  EXPECT_NE(s.code(), absl::StatusCode::kOk);
  s = LoadCompressorPluginFromDir("", file, outside);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_EQ(LoadCompressorPluginFromDir(tmp.File("nope"), file, outside).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(FindInfo(outside.List(), "example_recent"), nullptr);
  Registry inside;
  ASSERT_TRUE(LoadCompressorPluginFromDir(plugin_dir, file, inside).ok());
  EXPECT_NE(FindInfo(inside.List(), "example_recent"), nullptr);
}

TEST(PluginOptionsJsonTest, ParsesEveryType) {
  auto specs = ParsePluginOptionsJson(R"([
    {"name": "n", "type": "int", "default": 3, "min": 1, "max": 8, "help": "count"},
    {"name": "x", "type": "double", "default": 0.5},
    {"name": "b", "type": "bool", "default": true},
    {"name": "s", "type": "string", "default": "mean"}])");
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 4u);
  EXPECT_EQ((*specs)[0].max, 8);
  EXPECT_EQ((*specs)[0].help, "count");
  EXPECT_EQ(std::get<double>((*specs)[1].default_value), 0.5);
  EXPECT_TRUE(std::get<bool>((*specs)[2].default_value));
  EXPECT_EQ(std::get<std::string>((*specs)[3].default_value), "mean");
  EXPECT_TRUE(ParsePluginOptionsJson("").ok());
  EXPECT_TRUE(ParsePluginOptionsJson("[]").ok());
}

TEST(PluginOptionsJsonTest, RejectsMalformedSpecs) {
  const std::pair<const char*, const char*> cases[] = {
      {"{", "JSON array"},
      {R"({"name": "n"})", "JSON array"},
      {R"([{"type": "int", "default": 1}])", "name"},
      {R"([{"name": "n", "type": "float", "default": 1}])", "'n'"},
      {R"([{"name": "n", "type": "int", "default": 1.5}])", "default"},
      {R"([{"name": "n", "type": "int", "default": 9, "max": 4}])", "outside"},
      {R"([{"name": "n", "type": "int", "default": 1, "min": "0"}])", "min"},
      {R"([{"name": "a=b", "type": "int", "default": 1}])", "'='"},
      {R"([{"name": "n", "type": "bool", "default": 0}])", "default"},
      {R"([{"name": "n", "type": "int", "default": 1}, {"name": "n", "type": "int", "default": 1}])",
       "twice"}};
  for (const auto& [text, fragment] : cases) {
    auto specs = ParsePluginOptionsJson(text);
    ASSERT_FALSE(specs.ok()) << text;
    EXPECT_EQ(specs.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(specs.status().message(), HasSubstr(fragment)) << text;
  }
}

// The plugin side of the ABI, driven directly: errors come back as return
// codes with a thread-local message, never as exceptions.
TEST(PluginAbiTest, CreateReportsBadConfigThroughLastError) {
  void* library = dlopen(kRecentPlugin.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(library, nullptr) << dlerror();
  auto get = reinterpret_cast<kvg_plugin_get_compressor_v1_fn>(
      dlsym(library, KVG_PLUGIN_GET_COMPRESSOR_V1_SYMBOL));
  ASSERT_NE(get, nullptr);
  const kvg_compressor_vtable_v1* vtable = get();
  EXPECT_EQ(vtable->struct_size, sizeof(kvg_compressor_vtable_v1));
  kvg_compressor_t* handle = nullptr;
  EXPECT_EQ(vtable->create(R"({"bonus_sinks": "two"})", &handle), KVG_ERROR);
  EXPECT_EQ(handle, nullptr);
  EXPECT_THAT(vtable->last_error(), HasSubstr("bonus_sinks"));
  EXPECT_EQ(vtable->create("{not json", &handle), KVG_ERROR);
  EXPECT_THAT(vtable->last_error(), HasSubstr("config"));
  EXPECT_EQ(vtable->create(R"({"bonus_sinks": -4})", &handle), KVG_ERROR);
  EXPECT_THAT(vtable->last_error(), HasSubstr(">= 0"));
  ASSERT_EQ(vtable->create(R"({"bonus_sinks": 1})", &handle), KVG_OK);
  vtable->destroy(handle);
  dlclose(library);  // safe here: every instance is destroyed
}

TEST(PluginSdkTest, ConfigReadsFlatScalars) {
  const auto config = kvg::sdk::Config::Parse(
      R"( {"n": -12, "x": 2.5e1, "b": true, "s": "a\"b\\c\u004A\n", "z": null} )");
  EXPECT_EQ(config.Int("n", 0), -12);
  EXPECT_EQ(config.Double("x", 0), 25.0);
  EXPECT_TRUE(config.Bool("b", false));
  EXPECT_EQ(config.String("s", ""), "a\"b\\cJ\n");
  EXPECT_EQ(config.Int("z", 7), 7) << "null means absent";
  EXPECT_EQ(config.Int("missing", 9), 9);
  EXPECT_THROW((void)config.Int("x", 0), std::invalid_argument) << "25.0 is not an integer";
  EXPECT_THROW((void)config.Bool("n", false), std::invalid_argument);
  EXPECT_THROW(kvg::sdk::Config::Parse(R"({"a": [1]})"), std::invalid_argument);
  EXPECT_THROW(kvg::sdk::Config::Parse(R"({"a": 1} x)"), std::invalid_argument);
  EXPECT_NO_THROW(kvg::sdk::Config::Parse("{}"));
}

TEST(PluginSdkTest, ApiMacrosTurnExceptionsIntoErrors) {
  auto throws = []() -> int32_t {
    KVG_API_BEGIN
    throw std::runtime_error("boom");
    KVG_API_END
  };
  auto succeeds = []() -> int32_t {
    KVG_API_BEGIN
    KVG_API_END
  };
  EXPECT_EQ(throws(), KVG_ERROR);
  EXPECT_STREQ(kvg::sdk::LastError(), "boom");
  EXPECT_EQ(succeeds(), KVG_OK);
}

// --- the CLI ---

struct RunResult {
  int exit_code;
  std::string out;
  std::string err;
};

RunResult Kvguard(const std::vector<std::string>& args) {
  kvguard::testing::TempDir tmp;
  std::string cmd = std::string(KVG_BIN_DIR) + "/kvguard";
  for (const auto& a : args) cmd += " '" + a + "'";  // test paths hold no quotes
  cmd += " 2>" + tmp.File("err");
  FILE* p = popen(cmd.c_str(), "r");
  RunResult r;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = kvguard::testing::ReadFile(tmp.File("err"));
  return r;
}

// `args` plus the example plugin, tiny-llama and a 16-token prompt.
std::vector<std::string> WithPluginModelAndIds(std::vector<std::string> args) {
  args.insert(args.end(), {"--plugin", kRecentPlugin, "--model",
                           kvguard::testing::DataPath("models/tiny-llama"), "--ids",
                           "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"});
  return args;
}

TEST(PluginCliTest, KeptWithPluginKeepsTheNewestHalf) {
  const RunResult r =
      Kvguard(WithPluginModelAndIds({"kept", "--compressor", "example_recent", "--ratio", "0.5"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json kept = json::parse(r.out)["kept"];
  ASSERT_FALSE(kept.empty());
  for (const json& layer : kept) {
    ASSERT_FALSE(layer.empty());
    for (const json& head : layer) EXPECT_EQ(head, json({8, 9, 10, 11, 12, 13, 14, 15}));
  }
}

TEST(PluginCliTest, CompressorsAndGenerateAcceptPlugins) {
  RunResult r = Kvguard({"compressors", "--plugin", kRecentPlugin});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  bool listed = false;
  const json listing = json::parse(r.out);  // named: a range-for over a temporary's member dangles
  for (const json& c : listing["compressors"]) {
    if (c["name"] != "example_recent") continue;
    listed = true;
    EXPECT_EQ(c["origin"], kRecentPlugin);
    EXPECT_EQ(c["options"][0]["name"], "bonus_sinks");
  }
  EXPECT_TRUE(listed);
  r = Kvguard(WithPluginModelAndIds({"generate", "--compressor", "example_recent",
                                     "--compressor-opt", "bonus_sinks=2", "--ratio", "0.5",
                                     "--max-new-tokens", "4", "--ignore-eos", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["output_ids"].size(), 4u);
}

TEST(PluginCliTest, BadPluginFailsWithOneLine) {
  const RunResult r = Kvguard({"compressors", "--plugin", kBadAbiPlugin});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("999"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

}  // namespace
}  // namespace kvguard::compress
