#!/usr/bin/env bash
# Download, on a networked machine, the transformers the GPU machine needs into .carry/tf/
# (git-ignored): the version this project develops against (the GPU machine has 5.17, which
# has ExpertsInterface but no transformers.distributed.expert_parallel, so no ep_size /
# ep_implementation), its dependencies for the GPU machine's platform (CPython 3.12,
# manylinux x86_64), and accelerate (sharded loading) without its torch requirement.
# About 30 MB; the device run carries 64 MiB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.carry/tf
TRANSFORMERS=${TRANSFORMERS:-5.23.0}
ACCELERATE=${ACCELERATE:-1.15.0}
PLATFORM=(--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
mkdir -p "$DEST"
python3 -m pip download -q "${PLATFORM[@]}" -d "$DEST" "transformers==$TRANSFORMERS"
python3 -m pip download -q "${PLATFORM[@]}" --no-deps -d "$DEST" "accelerate==$ACCELERATE" psutil
# The GPU machine has numpy (2.5.x); carrying another 16 MB of it buys nothing.
rm -f "$DEST"/numpy-*.whl
du -sh "$DEST"
