#!/usr/bin/env bash
# No-op build cost of CompressOnBuild: two identical fresh apps (the same model copied to the output), one with
# the package and a CompressModel item, one without. Both are built once, then N no-op
# `dotnet build --no-restore` of each are timed, interleaved. Prints the medians and their ratio and writes
# them into docs/build-integration.md (between the noop-bench markers). Target: ratio <= 1.05.
# Usage: build/noop-bench.sh [N=10]   BUILD_ARGS (e.g. -p:ArtifactsPath=/tmp/art) goes to the pack and generator.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
n="${1:-10}"
work="$(mktemp -d /tmp/cob-noop-XXXXXX)"
feed="$work/feed"
mkdir -p "$feed"
machine_packages="${NUGET_PACKAGES:-$HOME/.nuget/packages}"
ort="$(sed -n 's:.*<OnnxRuntimeVersion>\(.*\)</OnnxRuntimeVersion>.*:\1:p' Directory.Packages.props)"

echo "=== pack" >&2
version="$(FEED="$feed" PACK_ARGS="${BUILD_ARGS:-}" build/pack.sh)"

echo "=== generate the model" >&2
# shellcheck disable=SC2086
dotnet run --project samples/ShapesGenerator -c Release ${BUILD_ARGS:-} -- --out "$work/generated" \
  --train 1200 --val 300 --hidden 64 --epochs 4 >&2

echo '<Project />' > "$work/Directory.Build.props"
echo '<Project />' > "$work/Directory.Build.targets"
echo '<Project><PropertyGroup><ManagePackageVersionsCentrally>false</ManagePackageVersionsCentrally></PropertyGroup></Project>' \
  > "$work/Directory.Packages.props"
cat > "$work/nuget.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="compressonbuild-bench-feed" value="$feed" />
  </packageSources>
</configuration>
XML
export NUGET_PACKAGES="$work/packages"

make_app() { # name, extra items
  mkdir -p "$work/$1"
  cp -r "$work/generated" "$work/$1/generated"
  echo 'System.Console.WriteLine("ok");' > "$work/$1/Program.cs"
  cat > "$work/$1/$1.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <RestoreAdditionalProjectFallbackFolders>$machine_packages</RestoreAdditionalProjectFallbackFolders>
    <NuGetAudit>false</NuGetAudit>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Microsoft.ML.OnnxRuntime" Version="$ort" />
    <PackageReference Include="System.Numerics.Tensors" Version="9.0.19" />
    <None Include="generated/shapes.onnx" CopyToOutputDirectory="PreserveNewest" />
$2
  </ItemGroup>
</Project>
XML
}
make_app without ""
make_app with "    <PackageReference Include=\"CompressOnBuild\" Version=\"$version\" />
    <CompressModel Include=\"generated/shapes.onnx\" ValidationData=\"generated/val-images-idx3-ubyte\" Labels=\"generated/val-labels-idx1-ubyte\" MaxAccuracyDrop=\"3.0\" />"

echo "=== first builds" >&2
export COMPRESSONBUILD_CACHE="$work/cache"
for app in with without; do
  dotnet build "$work/$app/$app.csproj" -nologo -v:q >&2
done

time_build() { # app -> milliseconds
  local start end
  start=$(date +%s%N)
  dotnet build "$work/$1/$1.csproj" --no-restore -nologo -v:q >/dev/null
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}
with=(); without=()
for i in $(seq 1 "$n"); do
  without+=("$(time_build without)")
  with+=("$(time_build with)")
  echo "run $i: without ${without[-1]} ms, with ${with[-1]} ms" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
m_with=$(median "${with[@]}")
m_without=$(median "${without[@]}")
ratio=$(awk -v a="$m_with" -v b="$m_without" 'BEGIN {printf "%.3f", a / b}')
line="No-op \`dotnet build --no-restore\` ($n runs each, interleaved, $(date -u +%Y-%m-%d), $(nproc) cores): median ${m_without} ms without the package, ${m_with} ms with one CompressModel item; ratio **${ratio}** (target <= 1.05)."
echo "$line"

doc="$root/docs/build-integration.md"
if [ -f "$doc" ] && grep -q '<!-- noop-bench -->' "$doc"; then
  awk -v line="$line" '
    /<!-- noop-bench -->/ {print; print line; skip = 1; next}
    /<!-- \/noop-bench -->/ {skip = 0}
    !skip {print}' "$doc" > "$doc.tmp" && mv "$doc.tmp" "$doc"
fi
rm -rf "$work"
