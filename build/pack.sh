#!/usr/bin/env bash
# Packs the CompressOnBuild NuGet package (task + build logic + worker) into artifacts/feed.
# Usage: build/pack.sh [version]   (default 0.1.0-dev.<UTC timestamp>, so a fresh pack never collides with a
# stale copy in a NuGet cache). Prints the package path and size; the last line is the version.
# Extra MSBuild properties may be passed with PACK_ARGS, e.g. PACK_ARGS=-p:ArtifactsPath=/tmp/art.
# CHECK_DETERMINISTIC=1 then packs twice more, each time clean (an empty scratch artifacts folder), and fails unless the
# two packages are byte-identical (PackageIntegrationTests.CleanCiPacks_* checks the same entry by entry).
# FEED overrides the output folder; MAX_PACKAGE_KB (default 2048, the limit PackageIntegrationTests also asserts) fails
# the pack when the package grows above it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
version="${1:-0.1.0-dev.$(date -u +%Y%m%d%H%M%S)}"
feed="${FEED:-$root/artifacts/feed}"
mkdir -p "$feed"
# Zip entry times from the last commit: the same commit packs to the same bytes.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 315532800)}"
# shellcheck disable=SC2086
dotnet pack src/CompressOnBuild.Tasks/CompressOnBuild.Tasks.csproj -c Release -nologo -v:m \
  -p:Version="$version" -p:PackageOutputPath="$feed/" ${PACK_ARGS:-} >&2
pkg="$feed/CompressOnBuild.$version.nupkg"
[ -f "$pkg" ] || { echo "pack.sh: $pkg was not produced" >&2; exit 1; }
size=$(stat -c %s "$pkg")
echo "CompressOnBuild package: $pkg ($((size / 1024)) KiB)" >&2
echo "Package source for an app (README quick start): $feed" >&2
echo "PackageReference: <PackageReference Include=\"CompressOnBuild\" Version=\"$version\" PrivateAssets=\"all\" />" >&2
max_kb="${MAX_PACKAGE_KB:-2048}"
if [ "$((size / 1024))" -gt "$max_kb" ]; then
  echo "pack.sh: the package is $((size / 1024)) KiB, above the limit of $max_kb KiB (MAX_PACKAGE_KB)" >&2
  exit 1
fi
if [ "${CHECK_DETERMINISTIC:-0}" = 1 ]; then
  # The scratch artifacts folder is the same path both times: outside CI, PDBs hold absolute paths (of the sources
  # and of generated files under the artifacts folder), so packs from two different folders differ in those paths.
  scratch="$(mktemp -d)"
  for n in 1 2; do
    rm -rf "$scratch/artifacts"
    # shellcheck disable=SC2086
    dotnet pack src/CompressOnBuild.Tasks/CompressOnBuild.Tasks.csproj -c Release -nologo -v:m \
      -p:Version="$version" ${PACK_ARGS:-} -p:ArtifactsPath="$scratch/artifacts" -p:PackageOutputPath="$scratch/$n/" >&2
  done
  if cmp -s "$scratch/1/CompressOnBuild.$version.nupkg" "$scratch/2/CompressOnBuild.$version.nupkg"; then
    echo "pack.sh: deterministic (two clean packs are byte-identical)" >&2
    rm -rf "$scratch"
  else
    echo "pack.sh: NOT deterministic: $scratch/1 and $scratch/2 hold different packages" >&2
    exit 1
  fi
fi
echo "$version"
