#!/usr/bin/env bash
# On the H100 (repo root, .carry/ carried): the transformers integration on the GPU with the
# backends the host chooses there (DeepGEMM built from source when carried). Needs
# .carry/tf: pip download --only-binary=:all: --python-version 3.12 \
#   --platform manylinux_2_28_x86_64 -d .carry/tf transformers==5.23.0
set -uo pipefail
OUT=${OUT:-results/tmp}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl || exit 1
python3 -m pip install -q --no-index --find-links .carry/tf transformers==5.23.0 2>&1 | tail -2
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [ -d .carry/deepgemm ]; then
    source scripts/gpu_build_deepgemm.sh || echo "deep_gemm build FAILED (see $DG_LOG)"
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader;
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } | tee "$OUT/env.txt"
python3 -m pytest tests/test_gpu_transformers.py -v -s -p no:cacheprovider --moe-conformance= 2>&1 | tee "$OUT/gpu_transformers.txt"
