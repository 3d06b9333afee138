#!/usr/bin/env bash
# On the device machine (repo root, .carry/ carried): install our wheels, run the GPU tests
# and the reference GPU benchmark; logs go to $OUT (or results/tmp).
set -uo pipefail
OUT=${OUT:-results/tmp}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# DeepGEMM from source when its sources were carried (scripts/fetch_deepgemm.sh)
if [ -d .carry/deepgemm ]; then
    source scripts/gpu_build_deepgemm.sh || echo "deep_gemm build FAILED (see $DG_LOG)"
    cp "$DG_LOG" "$OUT/deepgemm-build.log" 2>/dev/null
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/env.txt"
python3 -m moe_core.cli plugins 2>&1 | tee "$OUT/plugins.txt"
python3 -m pytest tests/test_gpu.py plugins/deepgemm/tests/test_gpu_deepgemm.py -v -s -p no:cacheprovider \
    --moe-conformance= 2>&1 | tee "$OUT/gpu_tests.txt"
# The conformance kit where SM90 specs can run: reference and example on the GPU.
python3 -m pytest -p no:cacheprovider -q -rs --moe-conformance=reference,example,deepgemm \
    "$(python3 -c 'import moe_core.conformance.pytest_plugin as p; print(p.KIT)')" 2>&1 | tee "$OUT/conformance.txt"
python3 -m moe_core.cli matrix --html "$OUT/matrix.html" 2>&1 | tee "$OUT/matrix.txt"
python3 benchmarks/reference_gpu_bench.py 2>&1 | tee "$OUT/bench.txt"
python3 benchmarks/deepgemm_bench.py 2>&1 | tee "$OUT/deepgemm_bench.txt"
