#!/usr/bin/env bash
# The test suite (or part of it) under a sanitizer, in its own build folder:
#   scripts/sanitize.sh asan [--targets a,b] [CTEST_ARGS...]   # ASan + UBSan, build-asan/
#   scripts/sanitize.sh tsan [--targets a,b] [CTEST_ARGS...]   # ThreadSanitizer, build-tsan/
# e.g. scripts/sanitize.sh tsan --targets scheduler_test,guard_link_test -R 'SchedulerTest|GuardLinkTest'
# --targets builds only those test binaries (and the server and guard);
# without it the whole tree is built and the whole suite runs.
# libtorch, gRPC and OpenBLAS are not instrumented: reports inside them are
# suppressed (scripts/sanitize.supp); everything of ours is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:?usage: scripts/sanitize.sh asan|tsan [CTEST_ARGS...]}"
shift
case "$kind" in
asan) flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1" ;;
tsan) flags="-fsanitize=thread -g -O1" ;;
*) echo "sanitize: asan or tsan" >&2; exit 2 ;;
esac
dir="build-$kind"
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="${flags%% -g*}" >/dev/null
targets=()
if [ "${1:-}" = "--targets" ]; then
  IFS=, read -r -a targets <<<"${2:?--targets needs a list}"
  shift 2
fi
if [ ${#targets[@]} -gt 0 ]; then
  cmake --build "$dir" -j2 --target "${targets[@]}" kvguard-server kvguard-guard
else
  cmake --build "$dir" -j2
fi
# verify_asan_link_order=0: client_connect_test LD_PRELOADs a libc shim in front of the runtime.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0"
export UBSAN_OPTIONS="print_stacktrace=1:suppressions=$PWD/scripts/sanitize.supp"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/sanitize.supp"
cd "$dir" && ctest -j2 --output-on-failure "$@"
