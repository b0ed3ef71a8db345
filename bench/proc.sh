# What the benchmark scripts read of a process from /proc (sourced by run.sh and scale.sh).
cpu_seconds() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
peak_rss_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# tcp_memory_mib: the machine's TCP socket memory now (all sockets, both ends of loopback).
tcp_memory_mib() { awk -v p="$(getconf PAGESIZE)" '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "mem") printf "%.0f", $(i + 1) * p / 1048576 }' /proc/net/sockstat; }
