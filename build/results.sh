#!/usr/bin/env bash
# Regenerates the results sections of docs/results.md with the real worker, every labelled corpus model
# (../shared/corpus) validated on its full test set:
#   bash build/results.sh               both sections
#   bash build/results.sh compression   every quantization scheme
#   bash build/results.sh pruning       Magnitude (+ int8), Sensitivity vs uniform, Channels with/without refit
#   bash build/results.sh pruning-large Magnitude vs SparseGPT (and Channels) on ResNet18 and MiniLM (build the CLI first)
#   bash build/results.sh pruning-large:SparseGPT:0.5,MiniLM  only the rows whose "model pruning quantization" contains
#                                       one of the comma-separated texts (the other rows are kept, with a line saying so)
#   bash build/results.sh large-minilm  the MiniLM Int8 row and end-to-end line of "large" only (other rows kept)
#   bash build/results.sh large         all-MiniLM-L6-v2 (2,000 sentences, text data) and ResNet18 (photos): size, quality,
#                                       latency vs fp32, end-to-end time and peak RSS (restores the large models first)
#   bash build/results.sh large-minilm-int4  the MiniLM Int4Weights row of "large" only (GPTQ on 256 calibration sentences,
#                                       validated on the others; replaced in place with its note line; build the CLI first)
#   bash build/results.sh large-resnet  only the ResNet18 rows of that section (replaced in place; build the CLI first)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
case " $* " in
  *" large"*|*" large-resnet"*|*" pruning-large"*) bash ../shared/corpus/large/fetch.sh >/dev/null ;;
esac
dotnet run --project tests/CompressOnBuild.Results -c Release -- "$@"
