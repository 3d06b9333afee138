#!/usr/bin/env bash
# DeepEP's source at the pinned tag into .carry/deepep/ (git-ignored), for
# scripts/gpu_build_deepep.sh. v1.2.1 is the last release with the deep_ep.Buffer API the
# deepep plugin is written against (shared/GPU.md: built and run on 2 x H200, 2026-11-30).
# Usage: scripts/fetch_deepep.sh [GIT_DIR_OR_URL]   (default: GitHub; a development machine
# that cannot reach GitHub passes a local clone or mirror with the tags)
# Writes deepep-v1.2.1.tar.gz and SHA256SUMS (the archive's checksum, with the commit);
# the build script checks both before it builds.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-https://github.com/deepseek-ai/DeepEP.git}
TAG=v1.2.1
COMMIT=9af0e0d0e74f3577af1979c9b9e1ac2cad0104ee  # what v1.2.1 points at
DEST=.carry/deepep
mkdir -p "$DEST"
if [ -d "$SRC" ]; then
    git_dir=$SRC
else
    git_dir=$(mktemp -d)
    git clone -q --bare --filter=blob:none "$SRC" "$git_dir"
fi
[ "$(git --git-dir="$git_dir" rev-parse "$TAG^{commit}")" = "$COMMIT" ] ||
    { echo "$TAG is not $COMMIT in $SRC" >&2; exit 1; }
# the commit, not the tag: the archive is the same tree wherever the tag is fetched from
git --git-dir="$git_dir" archive --format=tar.gz --prefix=DeepEP/ -o "$DEST/deepep-$TAG.tar.gz" "$COMMIT"
(cd "$DEST" && sha256sum "deepep-$TAG.tar.gz" > SHA256SUMS && echo "# $TAG $COMMIT" >> SHA256SUMS)
cat "$DEST/SHA256SUMS"
du -sh "$DEST"
