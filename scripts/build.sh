#!/usr/bin/env bash
# Configures and builds kvguard into build/ (binaries in build/bin/).
# Extra arguments go to cmake's configure step, e.g. -DCMAKE_PREFIX_PATH=... for CUDA libtorch.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${KVG_JOBS:-$(nproc)}"
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
fi
cmake --build build -j "$JOBS"
