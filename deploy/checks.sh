# Shared by deploy/kubernetes/validate.sh and deploy/validate-compose.sh (sourced): `check NAME
# COMMAND…` runs one check, prints "ok" or "FAIL" with its output, and counts it in
# $passed / $failed for the script's final "name: N passed, N failed" line.
passed=0
failed=0
check() {
  local name=$1
  shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    echo "$out" | sed 's/^/     /'
  fi
}
