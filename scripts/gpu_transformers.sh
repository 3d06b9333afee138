#!/usr/bin/env bash
# On the device machine (repo root, .carry/ carried): experts_implementation="moe_core" inside
# transformers against transformers' own experts implementations.
#   1gpu      (nvidia-h200):    the GPU transformers tests, then the 1-GPU benchmark
#   ep2       (nvidia-h200-x2): EP=2 and TP=2 on transformers' sharding (tests/test_gpu_transformers_ep.py)
#   ep2bench  (nvidia-h200-x2): the EP=2 benchmark (transformers' token exchange vs moe-core's)
# Usage: bash scripts/gpu_transformers.sh PHASE...   (default: 1gpu with one GPU, ep2 with two)
# One phase per device command keeps each under the 10-minute limit; the DeepGEMM / DeepEP
# builds (~2 and ~1 min) stay in /tmp for the next command while the machine is warm.
# .carry/ is built on a networked machine by scripts/build_carry.sh (our wheels),
# scripts/fetch_transformers.sh (transformers 5.23 + accelerate: the GPU machine's 5.17 has no
# expert_parallel module), scripts/fetch_deepgemm.sh and, for ep2, scripts/fetch_deepep.sh;
# about 50 MB. Logs, JSON and plots go to $OUT (the device run's folder) or results/tmp.
set -uo pipefail
OUT=${OUT:-results/tmp}; mkdir -p "$OUT"
NGPU=$(nvidia-smi -L | wc -l)
PHASES=${*:-$([ "$NGPU" -ge 2 ] && echo ep2 || echo 1gpu)}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl || exit 1
python3 -m pip install -q --no-index --find-links .carry/tf transformers==5.23.0 accelerate==1.15.0 \
    2>&1 | tail -2
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [ -d .carry/deepgemm ]; then
    source scripts/gpu_build_deepgemm.sh || echo "deep_gemm build FAILED (see $DG_LOG)"
    cp "$DG_LOG" "$OUT/deepgemm-build.log" 2>/dev/null
fi
if [[ " $PHASES " == *" ep2"* ]] && [ -d .carry/deepep ]; then
    source scripts/gpu_build_deepep.sh || echo "deep_ep build FAILED (see $DE_LOG)"
    cp "$DE_LOG" "$OUT/deepep-build.log" 2>/dev/null
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "phases: $PHASES"; } | tee "$OUT/env.txt"
python3 -m moe_core.cli plugins 2>&1 | tee "$OUT/plugins.txt"

for phase in $PHASES; do
  case $phase in
    1gpu)
      timeout 200 python3 -m pytest tests/test_gpu_transformers.py -v -s -p no:cacheprovider \
          --moe-conformance= 2>&1 | tee "$OUT/gpu_transformers.txt"
      timeout 330 python3 benchmarks/transformers_bench.py --preset qwen3-30b-a3b,deepseek-v3-64e \
          --out "$OUT/bench_1gpu.json" --plot "$OUT/bench_1gpu.png" 2>&1 | tee "$OUT/bench_1gpu.txt" ;;
    ep2)
      # tests/hf_dist_worker.py under torchrun, checked; its JSON lands in $OUT/hf_dist_ep2.json
      OUT="$OUT" timeout 360 python3 -m pytest tests/test_gpu_transformers_ep.py -v -s \
          -p no:cacheprovider --moe-conformance= 2>&1 | tee "$OUT/hf_dist_ep2.txt" ;;
    ep2bench)
      timeout 360 torchrun --nproc_per_node 2 benchmarks/transformers_bench.py --ep 2 --preset qwen3-30b-a3b \
          --out "$OUT/bench_ep2.json" --plot "$OUT/bench_ep2.png" 2>&1 | tee "$OUT/bench_ep2.txt" ;;
    *) echo "unknown phase $phase (expected 1gpu, ep2 or ep2bench)"; exit 2 ;;
  esac
done
