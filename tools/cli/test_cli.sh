#!/usr/bin/env bash
# Checks of the `blasst` command line that need no GPU: help, errors for bad input, and what
# `bench --engine cuda` runs (a stand-in python3 first on PATH prints the script it was given
# and its arguments, and fails for the script named in $FAIL_SCRIPT).
#   tools/cli/test_cli.sh path/to/blasst
set -uo pipefail
cli=${1:?usage: test_cli.sh path/to/blasst}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/python3" <<'SH'
#!/bin/sh
script=$(basename "$1")
shift
echo "ran $script $*"
[ "$script" = "${FAIL_SCRIPT:-}" ] && exit 3
exit 0
SH
chmod +x "$tmp/python3"
failures=0

# expect CODE PATTERN [joined] COMMAND...: exit code CODE and PATTERN (grep -E) in stdout + stderr
# (joined: matched against the output's lines joined by spaces)
expect() {
  local code=$1 pattern=$2
  shift 2
  local out rc
  if [ "$1" = joined ]; then  # the output's lines joined by spaces
    shift
    out=$(PATH="$tmp:$PATH" "$@" 2>&1 | paste -sd ' ')
  else
    out=$(PATH="$tmp:$PATH" "$@" 2>&1)
  fi
  rc=$?
  if [ "$rc" != "$code" ] || ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL: $* -> exit $rc (expected $code), output:"
    sed 's/^/    /' <<<"$out"
    failures=$((failures + 1))
  else
    echo "ok: $*"
  fi
}

expect 0 '^ran gpu_decode_bench.py --points 1x1024 --reps 3$' "$cli" bench --engine cuda --phase decode --points 1x1024 --reps 3
expect 0 '^ran gpu_bench.py --seqlens 8192$' "$cli" bench --phase=prefill --seqlens 8192 --engine=cuda
# the default phase is all: prefill, then decode, each with the same arguments
expect 0 '^ran gpu_bench.py --lib x.so ran gpu_decode_bench.py --lib x.so$' joined "$cli" bench --engine cuda --lib x.so
out=$(FAIL_SCRIPT=gpu_bench.py PATH="$tmp:$PATH" "$cli" bench --engine cuda 2>&1)
rc=$?
if [ "$rc" != 3 ] || grep -q gpu_decode_bench <<<"$out"; then
  echo "FAIL: a failing prefill benchmark must stop --phase all with its exit code (got $rc):"
  sed 's/^/    /' <<<"$out"
  failures=$((failures + 1))
else
  echo "ok: --phase all stops at the first failing benchmark"
fi
expect 2 "--phase must be prefill, decode or all, not 'sideways'" "$cli" bench --engine cuda --phase sideways
expect 2 '--phase needs a value' "$cli" bench --engine cuda --phase
expect 0 'gpu_decode_bench.py' "$cli" bench --engine cuda --help
expect 2 "unknown command 'frobnicate'" "$cli" frobnicate
expect 2 'a command is required' "$cli"
expect 2 '--seqlen: Value -5 not in range' "$cli" bench --seqlen -5
expect 2 '--q is required' "$cli" run
expect 0 'Subcommands' "$cli" --help

if [ "$failures" -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
