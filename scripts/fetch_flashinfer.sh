#!/usr/bin/env bash
# Download, on a networked machine, what the GPU machine needs for the FlashInfer CUTLASS
# plugin: the pinned flashinfer-python wheel (pure Python; its CUDA sources are JIT-compiled
# there) and apache-tvm-ffi for the device's Python 3.12. Into .carry/fi/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.carry/fi
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" flashinfer-python==0.5.3 apache-tvm-ffi==0.1.15.post2
sha256sum -c <<SUMS
059eed9bfc94bcd41650fb8eefde74040a1bc7e7b1a6f0a8ff897b02b118875b  .carry/fi/apache_tvm_ffi-0.1.15.post2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
b601293b72f9138bad173edc28df84b9f239a013be974e2e79d4ba98aeb38cf5  .carry/fi/flashinfer_python-0.5.3-py3-none-any.whl
SUMS
du -sh "$DEST"
