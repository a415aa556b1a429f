#!/usr/bin/env bash
# Regenerates the compression results table in docs/results.md: every labelled corpus model (../shared/corpus)
# through every quantization scheme with the real worker, validated on the full test sets.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet run --project tests/CompressOnBuild.Results -c Release -- "$@"
