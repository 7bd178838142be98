#!/usr/bin/env bash
# Walks the README's path on a clean Debian bookworm root, as a new user's machine would be.
#
#   sudo scripts/fresh_check.sh --cache DIR [--keep] [--mirror URL] [COMMAND...]
#
# Makes (once, then reuses from DIR/base/) a `debootstrap --variant=minbase` bookworm root with
# git, copies it to DIR/runs/<time>/root, clones the committed tree of this repository into
# /work/kvguard there (no ../shared beside it, as in a user's clone) and runs COMMAND there with
# chroot (default: scripts/test.sh). Prints the command's exit code and the log path, and exits
# with that code. Needs root (chroot, mounts) and a Debian mirror; the mirror defaults to the first
# one this machine's apt uses. --keep leaves the run's root for inspection (default: removed on
# success, kept on failure).
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

CACHE="" KEEP=0 MIRROR=""
while [ $# -gt 0 ]; do
  case "$1" in
  --cache) CACHE="${2:?--cache needs a directory}"; shift 2 ;;
  --keep) KEEP=1; shift ;;
  --mirror) MIRROR="${2:?--mirror needs a URL}"; shift 2 ;;
  -h | --help) usage ;;
  --) shift; break ;;
  -*) echo "fresh_check: unknown option $1" >&2; usage ;;
  *) break ;;
  esac
done
[ -n "$CACHE" ] || { echo "fresh_check: --cache DIR is required (the base root is kept there)" >&2; usage; }
[ "$(id -u)" -eq 0 ] || { echo "fresh_check: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
COMMAND=("$@")
[ ${#COMMAND[@]} -gt 0 ] || COMMAND=(scripts/test.sh)

REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# The mirror this machine's apt uses (deb822 .sources first, then one-line sources.list).
if [ -z "$MIRROR" ]; then
  MIRROR="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)"
  [ -n "$MIRROR" ] ||
    MIRROR="$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)"
  [ -n "$MIRROR" ] || { echo "fresh_check: no Debian mirror found in /etc/apt; pass --mirror URL" >&2; exit 2; }
fi

if ! command -v debootstrap >/dev/null; then
  echo "fresh_check: installing debootstrap" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# 1. The base root, made once: minbase + git (what the issue's "new user" had).
BASE="$CACHE/base/bookworm-minbase.tar"
if [ ! -f "$BASE" ]; then
  echo "fresh_check: debootstrap bookworm (minbase + git) from $MIRROR into $CACHE/base (once)" >&2
  mkdir -p "$CACHE/base"
  tmp_root="$CACHE/base/root.tmp"
  rm -rf "$tmp_root"
  debootstrap --variant=minbase --include=git,ca-certificates bookworm "$tmp_root" "$MIRROR" \
    >"$CACHE/base/debootstrap.log" 2>&1 ||
    { echo "fresh_check: debootstrap failed, see $CACHE/base/debootstrap.log" >&2; exit 1; }
  tar -C "$tmp_root" -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
  rm -rf "$tmp_root"
fi

# 2. A fresh copy for this run, the committed tree cloned into it.
RUN="$CACHE/runs/$(date +%Y%m%d-%H%M%S)"
ROOT="$RUN/root"
LOG="$RUN/log.txt"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# The same package sources as this machine (release, updates, security), so versions match.
if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
  cp /etc/apt/sources.list.d/*.sources "$ROOT/etc/apt/sources.list.d/"
  : >"$ROOT/etc/apt/sources.list"
fi
# This machine's extra CA certificates (e.g. a TLS-inspecting egress proxy's), trusted in the root
# as they are here; on a user's machine the system store already reaches the registries.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null 2>&1 || true
fi
git clone -q --no-local "$REPO" "$ROOT/work/kvguard"
echo "fresh_check: cloned $(git -C "$REPO" rev-parse --short HEAD) into $ROOT/work/kvguard" >&2

MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
mount_in() { # type-or-bind source target
  mkdir -p "$3"
  if [ "$1" = bind ]; then mount --bind "$2" "$3"; else mount -t "$1" "$2" "$3"; fi
  MOUNTS+=("$3")
}
mount_in proc proc "$ROOT/proc"
mount_in sysfs sys "$ROOT/sys"
mount_in bind /dev "$ROOT/dev"
mount_in bind /dev/pts "$ROOT/dev/pts"
mount_in tmpfs tmpfs "$ROOT/dev/shm"

# 3. The command, as root in the clean root, with a plain environment.
echo "fresh_check: running '${COMMAND[*]}' in $ROOT/work/kvguard (log: $LOG)" >&2
set +e
chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 TERM=dumb NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt /bin/bash -c 'cd /work/kvguard && exec "$@"' fresh_check "${COMMAND[@]}" >"$LOG" 2>&1
rc=$?
set -e
cleanup
MOUNTS=()
echo "fresh_check: exit code $rc; log $LOG"
tail -n 5 "$LOG" | sed 's/^/  | /'
if [ "$rc" -eq 0 ] && [ "$KEEP" -eq 0 ]; then
  rm -rf "$ROOT"
fi
exit "$rc"
