#!/usr/bin/env bash
# On the H100 device machine (repo root; .carry/ carried, with .carry/fi/ from
# scripts/fetch_flashinfer.sh): build our FlashInfer CUTLASS kinds, run their GPU tests and
# the benchmark. The build outlives one 10-minute command, so it runs detached:
#   bash scripts/gpu_flashinfer.sh start 540   # install, launch the pipeline, poll 540 s
#   bash scripts/gpu_flashinfer.sh poll 560    # later calls on the same warm machine
# SKIP_TESTS=1 skips the GPU tests (a benchmark-only rerun). BENCH names another benchmark
# (with its arguments) to run instead; what it writes to /tmp/fi/results comes back too.
# Logs and results land in /tmp/fi and are copied to $OUT on every poll.
set -uo pipefail
W=/tmp/fi
OUT=${OUT:-results/tmp}; mkdir -p "$OUT" "$W"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda MAX_JOBS=16 \
       FLASHINFER_WORKSPACE_BASE=/tmp/fiws FLASHINFER_CUDA_ARCH_LIST=9.0a MOE_CORE_CACHE=/tmp/moecache

stage() { echo "$(date -u +%T) $*" | tee -a "$W/stages.txt"; }

pipeline() {
    stage "start"
    for kind in bf16 fp8_block128; do
        stage "build $kind"
        python3 -m moe_plugin_flashinfer_cutlass.build "$kind" > "$W/build-$kind.log" 2>&1 \
            && stage "built $kind: $(tail -n 30 "$W/build-$kind.log" | grep -m1 load_seconds)" \
            || stage "build $kind FAILED"
    done
    stage "tests"
    [ -n "${SKIP_TESTS:-}" ] || python3 -m pytest plugins/flashinfer_cutlass/tests/test_gpu_flashinfer_cutlass.py -v -s \
        -p no:cacheprovider --moe-conformance= > "$W/gpu_tests.txt" 2>&1
    stage "tests rc=$?"
    if [ -d .carry/deepgemm ]; then
        stage "deepgemm build"
        DG_LOG=$W/deepgemm-build.log source scripts/gpu_build_deepgemm.sh || stage "deepgemm build FAILED"
    fi
    stage "bench"
    # shellcheck disable=SC2086
    python3 ${BENCH:-benchmarks/flashinfer_cutlass_bench.py} > "$W/bench.txt" 2>&1
    stage "bench rc=$?"
    touch "$W/done"
}

collect() {
    for f in stages.txt gpu_tests.txt bench.txt build-bf16.log build-fp8_block128.log; do
        [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"
    done
    [ -d "$W/results" ] && cp -r "$W/results/." "$OUT/"
    n=$(find /tmp/fiws -name '*.o' 2>/dev/null | wc -l)
    echo "objects compiled so far: $n"; cat "$W/stages.txt" 2>/dev/null
}

poll() {
    local until=$(( $(date +%s) + ${1:-540} ))
    while [ ! -f "$W/done" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 15; done
    collect
    [ -f "$W/done" ] && { tail -n 60 "$W/gpu_tests.txt"; cat "$W/bench.txt"; }
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
