#!/usr/bin/env bash
# Install, build and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
cd build
ctest --output-on-failure -j "${KVG_TEST_JOBS:-2}" --timeout 600
