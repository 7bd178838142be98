// File: services/engine/kv_span.h
//
// A run of a layer's retained KV slots that sits contiguously in memory, so
// attention can read a cache in place (no gather, no torch): the key of slot
// s (0 <= s < slots) of kv head h starts at element (h * head_stride + s) *
// head_dim of `keys`, its value at the same offset of `values`. A cache is a
// list of spans in slot order: one for a dense store, one per run of
// consecutive blocks for a paged one.
#pragma once

#include <cstdint>

namespace kvguard::engine {

struct KvSpan {
  const void* keys = nullptr;
  const void* values = nullptr;
  int64_t slots = 0;
  int64_t head_stride = 0;  // in slots
};

}  // namespace kvguard::engine
