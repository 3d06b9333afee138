#!/usr/bin/env bash
# On the H200 device machine (repo root; .carry/ carried with our wheels from
# scripts/build_carry.sh, .carry/fi/ from scripts/fetch_flashinfer.sh and .carry/deepgemm/
# from scripts/fetch_deepgemm.sh): build the FlashInfer CUTLASS kinds and DeepGEMM, so every
# SM90 runner can say yes, then run benchmarks/tune_bench.py. The builds outlive one
# 10-minute command, so the pipeline runs detached:
#   bash benchmarks/gpu_tune.sh start 540   # install, launch, poll 540 s
#   bash benchmarks/gpu_tune.sh poll 560    # later calls on the same warm machine
# BENCH_ARGS passes options to tune_bench.py (e.g. "--shapes deepseek-v3-ep8 --skip-speed").
# Logs and results land in /tmp/tune and are copied to $OUT on every poll.
set -uo pipefail
W=/tmp/tune
OUT=${OUT:-results/tmp}; mkdir -p "$OUT" "$W"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda MAX_JOBS=16 \
       FLASHINFER_WORKSPACE_BASE=/tmp/fiws FLASHINFER_CUDA_ARCH_LIST=9.0a MOE_CORE_CACHE=/tmp/moecache

stage() { echo "$(date -u +%T) $*" | tee -a "$W/stages.txt"; }

pipeline() {
    stage "start"
    for kind in bf16 fp8_block128; do
        stage "build flashinfer_cutlass $kind"
        python3 -m moe_plugin_flashinfer_cutlass.build "$kind" > "$W/build-$kind.log" 2>&1 \
            && stage "built $kind" || stage "build $kind FAILED"
    done
    if [ -d .carry/deepgemm ]; then
        stage "deepgemm build"
        DG_LOG=$W/deepgemm-build.log source scripts/gpu_build_deepgemm.sh || stage "deepgemm build FAILED"
    fi
    python3 -m moe_core.cli plugins > "$W/plugins.txt" 2>&1
    stage "bench"
    # shellcheck disable=SC2086
    python3 benchmarks/tune_bench.py --out "$W/results" ${BENCH_ARGS:-} > "$W/bench.txt" 2>&1
    stage "bench rc=$?"
    touch "$W/done"
}

collect() {
    for f in stages.txt plugins.txt bench.txt build-bf16.log build-fp8_block128.log deepgemm-build.log; do
        [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"
    done
    [ -d "$W/results" ] && cp "$W"/results/*.json "$W"/results/*.png "$OUT/" 2>/dev/null
    cat "$W/stages.txt" 2>/dev/null
}

poll() {
    local until=$(( $(date +%s) + ${1:-540} ))
    while [ ! -f "$W/done" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 15; done
    collect
    [ -f "$W/done" ] && cat "$W/bench.txt"
}

case "${1:-start}" in
    start)
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
            .carry/*.whl .carry/fi/*.whl || exit 1
        { date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc;
          python3 -c "import torch, flashinfer; print('torch', torch.__version__, 'flashinfer', flashinfer.__version__)"; } \
            | tee "$OUT/env.txt"
        setsid nohup bash "$0" pipeline > "$W/pipeline.log" 2>&1 < /dev/null &
        poll "${2:-540}" ;;
    pipeline) pipeline ;;
    poll) poll "${2:-540}" ;;
esac
