#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from the committed corpus, with libFuzzer
# through cargo-fuzz. Ends with "fuzz: N passed, N failed"; a crash leaves its input in
# fuzz/artifacts/TARGET/ (replay: cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…).
#
# cargo-fuzz needs nightly compiler flags: the nightly toolchain when one is installed,
# otherwise the stable one with RUSTC_BOOTSTRAP=1. No sanitizer: the code under test is safe
# Rust, so the fuzzers look for panics, broken invariants, hangs and runaway memory, and the
# build without it is quicker to make and to run.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
export CARGO_TERM_COLOR=never

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2 || { echo "fuzz: 0 passed, 1 failed"; exit 1; }
fi
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
build_flags=(-O --sanitizer none)

passed=0
failed=0
if ! "${fuzz[@]}" build "${build_flags[@]}"; then
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi
for target in $("${fuzz[@]}" list); do
  # New inputs go to a scratch copy: the committed corpus changes only by hand (cmin).
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  echo "=== fuzz $target for ${seconds}s"
  log="$work.log"
  "${fuzz[@]}" run "${build_flags[@]}" "$target" "$work" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1
  rc=$?
  grep -E '^(Done [0-9]+ runs|==[0-9]+== ?ERROR|SUMMARY|thread .* panicked)' "$log"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
  else
    tail -40 "$log"
    echo "=== FAILED: fuzz $target (input in fuzz/artifacts/$target/)"
    failed=$((failed + 1))
  fi
  rm -f "$log"
  rm -rf "$work"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
