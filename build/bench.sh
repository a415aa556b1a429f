#!/usr/bin/env bash
# Runs the kernel benchmarks (tests/CompressOnBuild.Benchmarks, BenchmarkDotNet, short in-process job; ~5 min on
# 2 cores) and rewrites the Kernels section of docs/results.md (between the kernels:begin/end markers).
# Usage: build/bench.sh [--quick]     ARTIFACTS_PATH=/some/dir to build outside ./artifacts
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
artifacts="${ARTIFACTS_PATH:-$root/artifacts}"
dotnet build tests/CompressOnBuild.Benchmarks -c Release -v:q -nologo "-p:ArtifactsPath=$artifacts"
dotnet "$artifacts/bin/CompressOnBuild.Benchmarks/release/CompressOnBuild.Benchmarks.dll" --results "$root/docs/results.md" "$@"
