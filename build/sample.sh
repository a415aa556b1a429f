#!/usr/bin/env bash
# The main demo: packs CompressOnBuild, generates the shapes model and validation data, then builds and runs
# samples/ShapesApp, which consumes the package like any app. The build output shows what was compressed,
# the sizes before and after and the measured accuracy (the worker's "CompressOnBuild:" summary line).
# Usage: build/sample.sh [package version]
# BUILD_ARGS (e.g. -p:ArtifactsPath=/tmp/art) is passed to the pack and to the generator's build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

echo "=== 1/4 pack CompressOnBuild"
version="$(PACK_ARGS="${BUILD_ARGS:-}" build/pack.sh "$@")"

echo "=== 2/4 generate the shapes data set and train the classifier"
# shellcheck disable=SC2086
dotnet run --project samples/ShapesGenerator -c Release ${BUILD_ARGS:-} -- --out samples/ShapesApp/generated

echo "=== 3/4 build samples/ShapesApp (compresses generated/shapes.onnx)"
dotnet build samples/ShapesApp -c Release -nologo -p:CompressOnBuildVersion="$version"
original=$(stat -c %s samples/ShapesApp/generated/shapes.onnx)
shipped=$(stat -c %s samples/ShapesApp/bin/Release/net10.0/generated/shapes.onnx)
echo "shapes.onnx: $((original / 1024)) KiB in the project, $((shipped / 1024)) KiB in the build output"

echo "=== 4/4 run samples/ShapesApp"
dotnet run --project samples/ShapesApp -c Release --no-build
