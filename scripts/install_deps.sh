#!/usr/bin/env bash
# Installs every Debian package kvguard needs to build, test and run, and makes OpenBLAS (OpenMP
# build, the runtime libtorch threads with) the system's libblas.so.3, which Debian's libtorch calls
# for f32 matmuls: the reference BLAS is ~30-60x slower on prefill, and BLIS 0.9.0 reads past its
# operands in sgemm (a segfault in batched decode); reports/bench/blas.md has the measurements.
# OpenBLAS's static TLS needs the thread-stack floor in common/thread_stack_floor.cc for /metrics.
# openssl: security_test makes its certificates with the openssl CLI.
# Also installs the npm packages of tests/ops/k8s-schema (the Kubernetes and prometheus-operator
# schema validator of the Helm chart test ops_k8s_schema) with `npm ci` from its package-lock.json.
# Idempotent: prints nothing and touches nothing when all is in place.
# scripts/fresh_check.sh proves the list complete on a clean Debian bookworm root.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git python3
  libabsl-dev nlohmann-json3-dev libpcre2-dev libgtest-dev libgmock-dev
  libtorch-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev libxgboost-dev
  python3-grpcio python3-grpc-tools python3-protobuf python3-pkg-resources
  prometheus golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev python3-yaml python3-jsonschema
  openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# node + npm for tests/ops/k8s-schema: Debian's nodejs and npm, unless a node with its npm is
# installed already (e.g. NodeSource's nodejs, which bundles npm and conflicts with Debian's npm).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# OpenBLAS (OpenMP) as libblas.so.3, whatever else provides the alternative.
BLAS="$(ls /usr/lib/*-linux-gnu/openblas-openmp/libblas.so.3 | head -1)"
MULTIARCH="$(basename "$(dirname "$(dirname "$BLAS")")")"  # e.g. x86_64-linux-gnu
ALT="libblas.so.3-$MULTIARCH"
if [ "$(readlink -f /etc/alternatives/$ALT 2>/dev/null)" != "$(readlink -f "$BLAS")" ]; then
  echo "install_deps: selecting OpenBLAS ($BLAS) as libblas.so.3" >&2
  $SUDO update-alternatives --quiet --set "$ALT" "$BLAS"
fi

# npm packages of tests/ops/k8s-schema, as its package-lock.json pins them (skipped when this script
# runs without the repository around it, as in deploy/Dockerfile's dependency layer). A stamp holding
# the lock file's hash makes reruns free; `npm ci` replaces node_modules as a whole.
SCHEMA_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/ops/k8s-schema"
if [ -f "$SCHEMA_DIR/package-lock.json" ]; then
  LOCK_SUM="$(sha256sum "$SCHEMA_DIR/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$SCHEMA_DIR/node_modules/.kvg-lock.sha256" 2>/dev/null)" != "$LOCK_SUM" ]; then
    echo "install_deps: npm ci in tests/ops/k8s-schema" >&2
    (cd "$SCHEMA_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$LOCK_SUM" >"$SCHEMA_DIR/node_modules/.kvg-lock.sha256"
  fi
fi
