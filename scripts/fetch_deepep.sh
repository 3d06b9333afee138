#!/usr/bin/env bash
# DeepEP's source at the pinned tag into .carry/deepep/ (git-ignored), for
# scripts/gpu_build_deepep.sh. v1.2.1 is the last release with the deep_ep.Buffer API the
# deepep plugin is written against (shared/GPU.md: built and run on 2 x H200, 2026-11-30).
# Usage: scripts/fetch_deepep.sh [GIT_DIR_OR_URL]   (default: GitHub; a development machine
# that cannot reach GitHub passes a local clone or mirror with the tags)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-https://github.com/deepseek-ai/DeepEP.git}
TAG=v1.2.1
COMMIT=9af0e0d  # what v1.2.1 points at
DEST=.carry/deepep
mkdir -p "$DEST"
if [ -d "$SRC" ]; then
    git_dir=$SRC
else
    git_dir=$(mktemp -d)
    git clone -q --bare --filter=blob:none "$SRC" "$git_dir"
fi
[ "$(git --git-dir="$git_dir" rev-parse --short=7 "$TAG^{commit}")" = "$COMMIT" ] ||
    { echo "$TAG is not $COMMIT in $SRC" >&2; exit 1; }
git --git-dir="$git_dir" archive --format=tar.gz --prefix=DeepEP/ -o "$DEST/deepep-$TAG.tar.gz" "$TAG"
du -sh "$DEST"
