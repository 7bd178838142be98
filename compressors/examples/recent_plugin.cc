// example_recent: an external compressor built only against the kvguard C ABI
// (compressor_abi.h plus the header-only SDK; no libtorch, no kvguard code),
// meant as a template for plugin authors.
//
// It keeps the most recent tokens: score = original position, so the top
// n_keep slots are the newest. Option bonus_sinks = N gives the first N
// positions +inf so they are always kept too (StreamingLLM's attention sinks).
//
//   kvguard kept --plugin build/lib/libkvg_example_recent.so --compressor example_recent
//       --compressor-opt bonus_sinks=4 --ratio 0.5 --model M --ids 1,2,3,...
#include <cmath>
#include <memory>

#include "kvguard/compressor_abi.h"
#include "kvguard/compressor_plugin_sdk.h"

// The plugin's instance type behind the ABI's opaque handle.
struct kvg_compressor {
  int64_t bonus_sinks = 0;
};

namespace {

constexpr char kName[] = "example_recent";
constexpr char kOptions[] = R"json([{"name": "bonus_sinks", "type": "int", "default": 0,
  "min": 0, "max": 1048576, "help": "the first N positions are always kept (attention sinks)"}])json";

int32_t Create(const char* config_json, kvg_compressor_t** out) {
  KVG_API_BEGIN
  const kvg::sdk::Config config = kvg::sdk::Config::Parse(config_json);
  auto compressor = std::make_unique<kvg_compressor>();
  compressor->bonus_sinks = config.Int("bonus_sinks", 0);
  // The host validates against kOptions, but the ABI may be driven by others.
  if (compressor->bonus_sinks < 0) return kvg::sdk::Fail("bonus_sinks must be >= 0");
  *out = compressor.release();
  KVG_API_END
}

void Destroy(kvg_compressor_t* compressor) { delete compressor; }

int32_t Score(kvg_compressor_t* compressor, const kvg_layer_view* view, float* scores_out) {
  KVG_API_BEGIN
  const int64_t count = view->num_kv_heads * view->num_slots;
  for (int64_t i = 0; i < count; ++i) {
    const int32_t position = view->positions[i];
    // Positions above 2^24 round in float32; order is kept, ties go to the earlier slot.
    scores_out[i] = position < compressor->bonus_sinks ? INFINITY : static_cast<float>(position);
  }
  KVG_API_END
}

const kvg_compressor_vtable_v1 kVtable = {
    .struct_size = sizeof(kvg_compressor_vtable_v1),
    .reserved = 0,
    .name = kName,
    .description = "Example plugin: keep the most recent tokens, plus N sinks",
    .options_json = kOptions,
    .create = Create,
    .destroy = Destroy,
    .score = Score,
    .last_error = kvg::sdk::LastError,
};

}  // namespace

extern "C" KVG_PLUGIN_EXPORT uint32_t kvg_plugin_abi_version(void) {
  return KVG_PLUGIN_ABI_VERSION;
}

extern "C" KVG_PLUGIN_EXPORT const kvg_compressor_vtable_v1* kvg_plugin_get_compressor_v1(void) {
  return &kVtable;
}
