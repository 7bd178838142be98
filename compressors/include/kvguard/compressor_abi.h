/* File: compressors/include/kvguard/compressor_abi.h
 *
 * The stable C ABI for external kvguard compressors. A plugin is a shared
 * library exporting two functions; the host (kvguard --plugin PATH, or
 * kvguard::compress::LoadCompressorPlugin) dlopens it, checks the ABI
 * version, reads the vtable and registers the compressor under its name.
 *
 * A plugin scores the retained slots of one layer (higher = keep); the host
 * picks the top n_keep per kv head, forces in protected positions and evicts
 * the rest, exactly as for built-in scoring compressors.
 *
 *   KVG_PLUGIN_EXPORT uint32_t kvg_plugin_abi_version(void) { return KVG_PLUGIN_ABI_VERSION; }
 *   KVG_PLUGIN_EXPORT const kvg_compressor_vtable_v1* kvg_plugin_get_compressor_v1(void) {
 *     return &my_vtable;
 *   }
 *
 * Rules that keep the ABI stable:
 *  - Only fixed-width integers, float, double and pointers cross the boundary;
 *    no C++ types, no allocation freed on the other side.
 *  - Structs start with uint32_t struct_size. New fields are only ever
 *    appended (marked @since); readers check struct_size before touching a
 *    field newer than v1. Removing or reordering a field bumps
 *    KVG_PLUGIN_ABI_VERSION, and the host refuses other versions outright.
 *  - Every fallible call returns int32_t: KVG_OK (0) or non-zero, with a
 *    message available from last_error() on the same thread.
 *
 * Threading: the host never calls score() concurrently on one handle;
 * different handles may be used from different threads at the same time.
 * C++ plugin authors: see compressor_plugin_sdk.h (exception barrier,
 * thread-local errors, config parsing). Compiles as C99 and C++.
 */
#ifndef KVGUARD_COMPRESSOR_ABI_H_
#define KVGUARD_COMPRESSOR_ABI_H_

#include <stdint.h>

#define KVG_PLUGIN_ABI_VERSION 1u

#define KVG_OK 0
#define KVG_ERROR (-1)

/* Marks the two entry points as exported even when the plugin is built with
 * -fvisibility=hidden (recommended: nothing else should leak out of it). */
#if defined(_WIN32)
#define KVG_PLUGIN_EXPORT __declspec(dllexport)
#else
#define KVG_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* One configured compressor instance, defined by the plugin (opaque to the
 * host). A distinct struct type, not void*, so handles cannot be mixed up. */
typedef struct kvg_compressor kvg_compressor_t;

/* One layer of one sequence's KV cache, as the host shows it to score().
 * Everything is borrowed for the duration of the call; do not keep pointers.
 * keys/values are contiguous float32 copies made by the host (post-RoPE keys),
 * whatever dtype and device the cache itself uses. */
typedef struct kvg_layer_view {
  uint32_t struct_size; /* sizeof(kvg_layer_view) as the host built it */
  uint32_t reserved;    /* 0; keeps the 64-bit fields naturally aligned */
  int64_t layer;        /* index of this layer, in [0, num_layers) */
  int64_t num_layers;
  int64_t num_kv_heads; /* K/V heads (grouped-query attention shares them) */
  int64_t num_heads;    /* query heads */
  int64_t head_dim;
  int64_t num_slots;        /* T: entries this layer currently retains, per kv head */
  int64_t num_positions;    /* tokens the sequence has had (>= num_slots) */
  int64_t n_keep;           /* the budget: slots the host will keep per kv head */
  double ratio;             /* fraction of entries to remove, in [0, 1) (kvpress) */
  const float* keys;        /* [num_kv_heads, num_slots, head_dim] */
  const float* values;      /* [num_kv_heads, num_slots, head_dim] */
  const int32_t* positions; /* [num_kv_heads, num_slots]: original token position */
} kvg_layer_view;

/* What a plugin exports: one compressor. Static data owned by the plugin,
 * valid while the library is loaded (the host never unloads it). */
typedef struct kvg_compressor_vtable_v1 {
  uint32_t struct_size; /* sizeof(kvg_compressor_vtable_v1) the plugin was built with */
  uint32_t reserved;    /* 0 */

  /* Registry name, e.g. "example_recent" (must not clash with another). */
  const char* name;
  /* One line: the method and its source. May be NULL. */
  const char* description;
  /* JSON array describing the options, or NULL for none:
   *   [{"name": "bonus_sinks", "type": "int", "default": 0, "min": 0, "max": 64,
   *     "help": "first N positions are always kept"}]
   * type is "int", "double", "bool" or "string"; min/max (numbers only) are
   * inclusive and optional. The host validates user input against it. */
  const char* options_json;

  /* Creates an instance. config_json is a JSON object holding every declared
   * option, validated and typed, e.g. {"bonus_sinks":2}. On success stores a
   * non-NULL handle in *out and returns KVG_OK. */
  int32_t (*create)(const char* config_json, kvg_compressor_t** out);
  /* Frees an instance made by create(). Must not fail. */
  void (*destroy)(kvg_compressor_t* compressor);
  /* Writes num_kv_heads * num_slots scores (row-major [kv_head][slot]) into
   * scores_out; higher = keep. NaN counts as lowest, +inf always wins. */
  int32_t (*score)(kvg_compressor_t* compressor, const kvg_layer_view* view, float* scores_out);
  /* Message of the last failed call on the calling thread (never NULL;
   * valid until the next call into the plugin on that thread). */
  const char* (*last_error)(void);

  /* New fields go here, each marked "@since ABI v1, struct_size >= N". */
} kvg_compressor_vtable_v1;

#if defined(__cplusplus)
static_assert(sizeof(void*) != 8 || sizeof(kvg_layer_view) == 104, "kvg_layer_view layout changed");
static_assert(sizeof(void*) != 8 || sizeof(kvg_compressor_vtable_v1) == 64,
              "kvg_compressor_vtable_v1 layout changed");
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(void*) != 8 || sizeof(kvg_layer_view) == 104,
               "kvg_layer_view layout changed");
_Static_assert(sizeof(void*) != 8 || sizeof(kvg_compressor_vtable_v1) == 64,
               "kvg_compressor_vtable_v1 layout changed");
#endif

/* The entry points, looked up by name with dlsym. The host calls
 * kvg_plugin_abi_version() first and only calls the getter when it returns
 * KVG_PLUGIN_ABI_VERSION. */
#define KVG_PLUGIN_ABI_VERSION_SYMBOL "kvg_plugin_abi_version"
#define KVG_PLUGIN_GET_COMPRESSOR_V1_SYMBOL "kvg_plugin_get_compressor_v1"

typedef uint32_t (*kvg_plugin_abi_version_fn)(void);
typedef const kvg_compressor_vtable_v1* (*kvg_plugin_get_compressor_v1_fn)(void);

KVG_PLUGIN_EXPORT uint32_t kvg_plugin_abi_version(void);
KVG_PLUGIN_EXPORT const kvg_compressor_vtable_v1* kvg_plugin_get_compressor_v1(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KVGUARD_COMPRESSOR_ABI_H_ */
