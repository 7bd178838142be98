// A deliberately incompatible plugin for tests: it claims ABI version 999,
// so the host must refuse it before asking for its vtable.
#include "kvguard/compressor_abi.h"

extern "C" KVG_PLUGIN_EXPORT uint32_t kvg_plugin_abi_version(void) { return 999; }

// Never called by a correct host (the version check comes first); returning
// NULL makes a host that skipped the check fail differently, which the
// tests would notice.
extern "C" KVG_PLUGIN_EXPORT const kvg_compressor_vtable_v1* kvg_plugin_get_compressor_v1(void) {
  return nullptr;
}
