#!/usr/bin/env bash
# Download, on a networked machine, the one vLLM file the layer benchmark's vLLM peer reads
# (benchmarks/peers/vllm_triton.py): the pinned vLLM sdist from PyPI, checked against its
# sha256, then only fused_moe.py (it holds the Triton grouped-GEMM kernel `fused_moe_kernel`
# and the jit helper it calls) and vLLM's tuned H200 and H100 configs are extracted into .carry/vllm/
# (git-ignored, ~0.2 MB; the 45 MB sdist is not kept). Nothing of vLLM is imported or committed.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.33.0
SHA256=f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112
DEST=.carry/vllm
MOE=vllm/model_executor/layers/fused_moe
KERNEL_FILE=$MOE/fused_moe.py   # where fused_moe_kernel lives in $VERSION
DEVICES="NVIDIA_H200 NVIDIA_H100_80GB_HBM3"  # the GPUs lent here (vLLM's file-name spelling)
STAMP="vllm $VERSION sha256 $SHA256 configs $DEVICES"
if [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$STAMP" ] && [ -f "$DEST/$KERNEL_FILE" ]; then
    echo "$DEST: vllm $VERSION already extracted"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sdist="$tmp/vllm-$VERSION.tar.gz"
url=$(curl -fsSL "https://pypi.org/simple/vllm/" | grep -o "https://[^\"#]*/vllm-$VERSION.tar.gz" | head -1)
[ -n "$url" ] || { echo "fetch_vllm.sh: no vllm-$VERSION.tar.gz on PyPI's simple index" >&2; exit 1; }
curl -fsSL -o "$sdist" "$url"
got=$(sha256sum "$sdist" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
    echo "fetch_vllm.sh: vllm-$VERSION.tar.gz from $url has sha256 $got; expected $SHA256" \
         "(pinned in this script): refusing it" >&2
    exit 1
fi
rm -rf "$DEST" && mkdir -p "$DEST"
tar -xzf "$sdist" -C "$DEST" --strip-components=1 --wildcards \
    "vllm-$VERSION/$KERNEL_FILE" $(for d in $DEVICES; do echo "vllm-$VERSION/$MOE/configs/*device_name=$d[,.]*"; done)
if ! grep -q "^def fused_moe_kernel(" "$DEST/$KERNEL_FILE"; then
    echo "fetch_vllm.sh: $KERNEL_FILE of vllm $VERSION has no fused_moe_kernel; extract the file" \
         "that holds it now (and update KERNEL_FILE)" >&2
    exit 1
fi
echo "$STAMP" > "$DEST/VERSION"
echo "$DEST: $KERNEL_FILE and $(find "$DEST/$MOE/configs" -name '*.json' | wc -l) configs ($DEVICES)"
du -sh "$DEST"
