#!/usr/bin/env bash
# Regenerates the results sections of docs/results.md with the real worker, every labelled corpus model
# (../shared/corpus) validated on its full test set:
#   bash build/results.sh               both sections
#   bash build/results.sh compression   every quantization scheme
#   bash build/results.sh pruning       Magnitude (+ int8), Sensitivity vs uniform, Channels with/without refit
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet run --project tests/CompressOnBuild.Results -c Release -- "$@"
