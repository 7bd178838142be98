# Sourced by the scripts that start kvguard-guard or kvguard-server on an
# ephemeral loopback port (demo.sh, bench_capacity.sh, guard_timing.sh).
# Needs BIN (the binaries' folder).

# Prints the address of the process logging to LOG once it says "listening on
# ADDR"; fails after TRIES x 0.1 s (default 100) with the log's tail.
listen_address() {
  local log=$1 tries=${2:-100} addr
  for _ in $(seq "$tries"); do
    addr=$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" 2>/dev/null | head -1 | awk '{print $3}')
    if [[ -n "$addr" ]]; then
      echo "$addr"
      return 0
    fi
    sleep 0.1
  done
  echo "no 'listening on' line in $log after $tries tries:" >&2
  tail -5 "$log" >&2
  return 1
}

# Starts the shipped guard (models/hazard/) on loopback, logging to LOG, with
# any extra flags (a repeated flag overrides); sets GUARD_PID and GUARD (its
# address).
start_guard() {
  local log=$1
  shift
  "$BIN/kvguard-guard" --listen 127.0.0.1:0 --metrics_listen "" --model models/hazard/hazard.json \
    --config models/hazard/controller.json "$@" >"$log" 2>&1 &
  GUARD_PID=$!
  GUARD=$(listen_address "$log")
}
