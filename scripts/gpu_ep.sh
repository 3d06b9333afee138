#!/usr/bin/env bash
# On the 2 x H200 machine (repo root, .carry/ carried): the EP=2 layer over NCCL against the
# single-process reference, then the dispatch benchmark. Logs go to $OUT (or results/tmp).
# WITH_DEEPGEMM=1 builds DeepGEMM first (scripts/fetch_deepgemm.sh), so the host can pick it.
set -uo pipefail
OUT=${OUT:-results/tmp}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [ -d .carry/deepgemm ] && [ -n "${WITH_DEEPGEMM:-}" ]; then
    source scripts/gpu_build_deepgemm.sh || echo "deep_gemm build FAILED (see $DG_LOG)"
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/env.txt"
python3 -m moe_core.cli plugins 2>&1 | tee "$OUT/plugins.txt"
if [ -z "${SKIP_EP_CHECK:-}" ]; then
    timeout 240 torchrun --nproc_per_node 2 tests/ep_worker.py --backend nccl --out "$OUT/ep_nccl.json" 2>&1 | tee "$OUT/ep_nccl.txt"
fi
timeout 300 torchrun --nproc_per_node 2 benchmarks/dispatch_bench.py --out "$OUT/dispatch_bench.json" 2>&1 | tee "$OUT/dispatch_bench.txt"
