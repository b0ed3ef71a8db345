# What the benchmark scripts share (sourced by run.sh, scale.sh and openssh.sh): starting the
# bridge, and what they read of a process from /proc.

# start_bridge: runs "$BIN serve" (under $WRAP, if set) on $WORK/config.toml with its output
# in $WORK, sets BRIDGE, adds it to PIDS, and waits until SFTP listens.
start_bridge() {
  ${WRAP:-} "$BIN" serve --config "$WORK/config.toml" >"$WORK/bridge.out" 2>"$WORK/bridge.err" &
  BRIDGE=$!
  PIDS+=("$BRIDGE")
  for _ in $(seq 1 100); do grep -q "sftp listening" "$WORK/bridge.out" 2>/dev/null && break; sleep 0.1; done
}

cpu_seconds() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
peak_rss_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# tcp_memory_mib: the machine's TCP socket memory now (all sockets, both ends of loopback).
tcp_memory_mib() { awk -v p="$(getconf PAGESIZE)" '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "mem") printf "%.0f", $(i + 1) * p / 1048576 }' /proc/net/sockstat; }
