#include "common/heap.h"

#include <malloc.h>

namespace kvguard {

void KeepFreedBlocksInHeap() {
  constexpr int kThreshold = 1 << 30;
  mallopt(M_MMAP_THRESHOLD, kThreshold);
  mallopt(M_TRIM_THRESHOLD, kThreshold);
}

}  // namespace kvguard
