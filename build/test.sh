#!/usr/bin/env bash
# Runs every test in the solution (unit, corpus, kernel-ISA variants and build integration tests) and
# ends with one line "N passed, N failed". Exit code 0 only if nothing failed.
# Usage: build/test.sh [extra dotnet test arguments]
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

passed=0; failed=0; skipped=0; status=0

# run_suite LABEL [env assignments...] -- dotnet test args
run_suite() {
  local label="$1"; shift
  echo "=== $label"
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local p f s
  p=$(grep -E '^\s+succeeded: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
  f=$(grep -E '^\s+failed: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
  s=$(grep -E '^\s+skipped: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  if [ "$rc" -ne 0 ]; then
    status=1
    if [ "$f" -eq 0 ]; then failed=$((failed + 1)); echo "!!! $label exited with $rc without a counted test failure"; fi
  fi
}

# The large corpus models (MiniLM, ResNet18) are not committed: restore them (idempotent; only verifies when present).
if [ -f ../shared/corpus/large/fetch.sh ]; then
  bash ../shared/corpus/large/fetch.sh || { echo "0 passed, 1 failed (large/fetch.sh)"; exit 1; }
fi

dotnet build CompressOnBuild.sln -c Release -v:q -nologo "$@" || { echo "0 passed, 1 failed"; exit 1; }

run_suite "all tests" dotnet test --solution CompressOnBuild.sln -c Release --no-build "$@"

# The kernels again with wider SIMD switched off, so every vector path and the scalar fallback run on this CPU.
for isa in DOTNET_EnableAVX512F DOTNET_EnableAVX2 DOTNET_EnableHWIntrinsic; do
  run_suite "kernels with $isa=0" env "$isa=0" dotnet test --project tests/CompressOnBuild.Kernels.Tests -c Release --no-build "$@"
done

echo "$passed passed, $failed failed, $skipped skipped"
exit $status
