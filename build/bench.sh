#!/usr/bin/env bash
# Runs the kernel benchmarks (tests/CompressOnBuild.Benchmarks, BenchmarkDotNet, short in-process job; ~5 min on
# 2 cores) and rewrites the Kernels section of docs/results.md (between the kernels:begin/end markers).
# Usage: build/bench.sh [--quick]     ARTIFACTS_PATH=/some/dir to build outside ./artifacts
#        build/bench.sh memory [SIZE_MB...] [--schemes Int8Dynamic,Int8Static,Int4Weights,Float16] [--ops MatMul,Gemm] [--width N]
#            the worker's peak RSS / weight bytes and compress MB/s vs a plain copy of the same file, per scheme, on
#            generated MatMul chains (--ops Gemm: Gemm transB=1 chains, each op in turn; no Conv generator; --width:
#            [N, N] weights, default 1024)
#            (default 100, 1000 and 2500 MB; generated in a temp folder, deleted after; needs
#            about 2.5x the largest size free in TMPDIR). Prints Markdown tables; docs/reliability.md holds the last run.
#        build/bench.sh scaling [--nodes 1000,10000,100000] [--shapes chain,conv,if,mixed] [--steps ...]
#                       [--worker-shapes chain,conv] [--worker-schemes Int8Dynamic,...] [--no-passes] [--digest]
#            time against node count (issue 17; also 'memory --graph-scaling'): each step in process (parse, check,
#            sort, every pass, save) and the real worker per scheme, every size side by side in one run, wall and CPU
#            seconds and the ratio per 10x nodes. --digest hashes each pass's output instead (compare two builds).
#            --sessions [--variants chain:disabled,relu:disabled,...] times ONNX Runtime session creation alone on
#            variants of the graphs, one factor each (default sizes 10000,100000; see OrtSessionScaling.cs).
#        build/bench.sh streaming [SIZE_MB] [--width N] [--rounds N] [--schemes Int8Dynamic,Int4Weights,Float16]
#            the streaming path in process on a generated MatMul chain with external data (default 2500 MB, 1024x1024
#            layers, 3 rounds), interleaved with a plain copy of the same files (with and without fsync), page cache
#            warm; prints the machine (CPU, AVX-512 VNNI), load averages, MB/s of weights, per-phase seconds and CPU s.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
artifacts="${ARTIFACTS_PATH:-$root/artifacts}"
dotnet build tests/CompressOnBuild.Benchmarks -c Release -v:q -nologo "-p:ArtifactsPath=$artifacts"
bench="$artifacts/bin/CompressOnBuild.Benchmarks/release/CompressOnBuild.Benchmarks.dll"
if [ "${1:-}" = "streaming" ]; then
  shift
  uptime
  df -h "${TMPDIR:-/tmp}"
  dotnet "$bench" --streaming "$@"
  exit 0
fi
if [ "${1:-}" = "scaling" ] || { [ "${1:-}" = "memory" ] && [ "${2:-}" = "--graph-scaling" ]; }; then
  [ "$1" = "memory" ] && shift
  shift
  dotnet build src/CompressOnBuild.Cli -c Release -v:q -nologo "-p:ArtifactsPath=$artifacts"
  uptime
  dotnet "$bench" --graph-scaling --worker "$artifacts/bin/CompressOnBuild.Cli/release/CompressOnBuild.Cli.dll" "$@"
  exit 0
fi
if [ "${1:-}" = "memory" ]; then
  shift
  dotnet build src/CompressOnBuild.Cli -c Release -v:q -nologo "-p:ArtifactsPath=$artifacts"
  uptime
  df -h "${TMPDIR:-/tmp}"
  dotnet "$bench" --memory "$artifacts/bin/CompressOnBuild.Cli/release/CompressOnBuild.Cli.dll" "$@"
  exit 0
fi
dotnet "$bench" --results "$root/docs/results.md" "$@"
