#!/usr/bin/env bash
# One GPU session on the device machine (repo root; .carry/ carried: our wheels from
# scripts/build_carry.sh, .carry/deepgemm from scripts/fetch_deepgemm.sh, .carry/fi from
# scripts/fetch_flashinfer.sh, .carry/tf from scripts/fetch_transformers.sh when present):
# build DeepGEMM and the FlashInfer CUTLASS kinds, run every GPU test (pytest -m gpu), the
# conformance kit on the GPU, then each benchmark in $BENCH ("script.py args; script2.py ...",
# each given --out <its JSON>).
# The builds outlive one 10-minute command, so the pipeline runs detached and is polled:
#   bash scripts/gpu_session.sh start 540   # install, launch, poll up to 540 s
#   bash scripts/gpu_session.sh poll 560    # later calls on the same warm machine
# Every log lands in /tmp/gs and, on every poll, in $OUT/session.tgz plus $OUT/stages.txt.
set -uo pipefail
W=/tmp/gs
OUT=${OUT:-results/tmp}; mkdir -p "$OUT" "$W"
REPO=$W/repo  # a copy: each device call re-sends the tree, the detached run must not lose it
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda MAX_JOBS=16 \
       FLASHINFER_WORKSPACE_BASE=/tmp/fiws FLASHINFER_CUDA_ARCH_LIST=9.0a MOE_CORE_CACHE=/tmp/moecache \
       MOE_HOOK_TIMEOUT=60

stage() { echo "$(date -u +%T) $*" | tee -a "$W/stages.txt"; }
step() {  # step NAME COMMAND...: run, log to $W/NAME.txt, record the exit status
    local name=$1; shift
    stage "$name"
    "$@" > "$W/$name.txt" 2>&1
    stage "$name rc=$?"
}

pipeline() {
    cd "$REPO"
    stage "start $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    DG_LOG=$W/deepgemm-build.log source scripts/gpu_build_deepgemm.sh || stage "deepgemm build FAILED"
    for kind in bf16 fp8_block128; do
        step "build-$kind" python3 -m moe_plugin_flashinfer_cutlass.build "$kind"
    done
    step plugins python3 -m moe_core.cli plugins
    step gpu_tests python3 -m pytest -m gpu tests plugins -v -s -rs -p no:cacheprovider --moe-conformance=
    step kit python3 -m pytest -p no:cacheprovider -q -rs \
        --moe-conformance=reference,deepgemm,flashinfer_cutlass,triton -k "sm90" \
        "$(python3 -c 'import moe_core.conformance.pytest_plugin as p; print(p.KIT)')"
    IFS=';' read -ra benches <<< "${BENCH:-}"
    for bench in "${benches[@]}"; do
        read -ra argv <<< "$bench"
        [ ${#argv[@]} -gt 0 ] || continue
        name=$(basename "${argv[0]}" .py)
        step "$name" python3 "${argv[@]}" --out "$W/$name.json"
    done
    touch "$W/done"
}

collect() {
    cp "$W/stages.txt" "$OUT/" 2>/dev/null
    tar czf "$OUT/session.tgz" -C "$W" --exclude repo . 2>/dev/null
    cat "$W/stages.txt" 2>/dev/null
}

poll() {
    local until=$(( $(date +%s) + ${1:-540} ))
    while [ ! -f "$W/done" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 10; done
    collect
    [ -f "$W/done" ] && tail -n 40 "$W/gpu_tests.txt"
}

case "${1:-start}" in
    start)
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
            .carry/*.whl .carry/fi/*.whl || exit 1
        if ls .carry/tf/*.whl >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
                .carry/tf/*.whl || exit 1
        fi
        rm -rf "$REPO" && mkdir -p "$REPO" && cp -r . "$REPO"
        { date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc;
          python3 -c "import torch, flashinfer, transformers; print('torch', torch.__version__, 'flashinfer', flashinfer.__version__, 'transformers', transformers.__version__)"; } \
            | tee "$W/env.txt"
        setsid nohup bash "$REPO/scripts/gpu_session.sh" pipeline > "$W/pipeline.log" 2>&1 < /dev/null &
        poll "${2:-540}" ;;
    pipeline) pipeline ;;
    poll) poll "${2:-540}" ;;
esac
