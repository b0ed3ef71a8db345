#!/usr/bin/env bash
# Rebuilds each vendored crate (vendor/<crate>/ with a patches/ directory) from its pristine
# crates.io release: the .crate is taken from the cargo registry cache or downloaded from
# static.crates.io (cached in target/vendor-pristine/), checked against
# patches/pristine.sha256, unpacked, and patches/*.patch are applied in order with `patch -p1`.
# The result must equal vendor/<crate>/, apart from what vendoring adds on purpose (PATCHES.md,
# patches/, Cargo.lock, a LICENSE the crate does not ship). Files of the crate under src/ must
# all be kept; files elsewhere that vendoring leaves out (examples, benches, a test that cannot
# run here) are listed, not failed.
# One check per patch (it applies) and one per crate (the tree matches). Ends with
# "vendor-patches: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/target/vendor-pristine
mkdir -p "$CACHE"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
pass() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); }

# The value of `key = "…"` in the [package] table of a Cargo.toml.
package_field() {
  awk -v key="$2" '
    /^\[/ { in_package = ($0 == "[package]") }
    in_package && $1 == key && $2 == "=" { gsub(/"/, "", $3); print $3; exit }' "$1"
}

# Path of the pristine .crate, from the registry cache or downloaded; empty on failure.
pristine_crate() {
  local name=$1 version=$2 file
  file=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -1)
  if [ -n "$file" ]; then echo "$file"; return; fi
  file=$CACHE/$name-$version.crate
  if [ ! -s "$file" ]; then
    curl -sSfL --retry 2 -o "$file.part" "https://static.crates.io/crates/$name/$name-$version.crate" \
      && mv "$file.part" "$file" || { rm -f "$file.part"; return; }
  fi
  echo "$file"
}

for dir in vendor/*/; do
  dir=${dir%/}
  [ -d "$dir/patches" ] || continue
  name=$(package_field "$dir/Cargo.toml" name)
  version=$(package_field "$dir/Cargo.toml" version)
  echo "=== $dir: $name $version"
  crate=$(pristine_crate "$name" "$version")
  if [ -z "$crate" ]; then
    fail "$name $version: the pristine crate is neither in the cargo registry cache nor downloadable"
    continue
  fi
  want=$(awk '{ print $1 }' "$dir/patches/pristine.sha256")
  got=$(sha256sum "$crate" | awk '{ print $1 }')
  if [ "$want" != "$got" ]; then
    fail "$name $version: $crate has sha256 $got, patches/pristine.sha256 says $want"
    continue
  fi
  tree=$WORK/$name-$version
  tar -xzf "$crate" -C "$WORK"
  for p in "$dir"/patches/*.patch; do
    if out=$(patch -p1 -f -s --no-backup-if-mismatch -d "$tree" <"$p" 2>&1); then
      pass "$(basename "$p")"
    else
      fail "$(basename "$p") does not apply: $out"
    fi
  done
  problems=0
  # Every vendored file is the patched pristine one, or one vendoring adds on purpose.
  while IFS= read -r -d '' f; do
    rel=${f#"$dir"/}
    case $rel in
      PATCHES.md | patches/* | Cargo.lock) continue ;;
      LICENSE) [ -e "$tree/LICENSE" ] || continue ;;
    esac
    if [ ! -e "$tree/$rel" ]; then
      echo "  $rel: in vendor/, not in $name $version + patches"; problems=$((problems + 1))
    elif ! cmp -s "$f" "$tree/$rel"; then
      echo "  $rel: differs from $name $version + patches:"
      diff -u "$tree/$rel" "$f" | head -20 | sed 's/^/    /'
      problems=$((problems + 1))
    fi
  done < <(find "$dir" -type f -not -path "$dir/target/*" -print0 | sort -z)
  # Nothing of the crate's source is dropped; anything else left out is listed.
  while IFS= read -r -d '' f; do
    rel=${f#"$tree"/}
    [ -e "$dir/$rel" ] && continue
    case $rel in
      src/*) echo "  $rel: in $name $version + patches, missing from vendor/"; problems=$((problems + 1)) ;;
      *) echo "  left out: $rel" ;;
    esac
  done < <(find "$tree" -type f -print0 | sort -z)
  if [ "$problems" -eq 0 ]; then
    pass "$dir equals $name $version + $(ls "$dir"/patches/*.patch | wc -l) patches"
  else
    fail "$dir: $problems difference(s) from $name $version + patches"
  fi
done

echo "vendor-patches: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
