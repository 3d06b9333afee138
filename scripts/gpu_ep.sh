#!/usr/bin/env bash
# Expert parallelism on the 2 x H200 machine (issue #15), one session (repo root; .carry/
# carried: our wheels from scripts/build_carry.sh, .carry/deepep from scripts/fetch_deepep.sh,
# .carry/deepgemm from scripts/fetch_deepgemm.sh, .carry/fi from scripts/fetch_flashinfer.sh):
#   1. build DeepEP v1.2.1 (checksum checked), DeepGEMM and the FlashInfer CUTLASS kinds;
#   2. DeepEP's own intranode and low-latency tests (the numbers moe-core is compared with);
#   3. the GPU tests of expert parallelism (pytest -m gpu: tests/test_gpu_ep.py and the plugin's);
#   4. tests/ep_worker.py over NCCL (every case, JSON) and benchmarks/dispatch_bench.py.
# The builds outlive one 10-minute device command, so the pipeline runs detached and is polled:
#   bash scripts/gpu_ep.sh start 540    # install, launch, poll up to 540 s
#   bash scripts/gpu_ep.sh poll 560     # later calls on the same warm machine, until "done"
# Logs and JSON land in /tmp/ep and, on every poll, in $OUT (stages.txt, ep.tgz, the JSON).
set -uo pipefail
W=/tmp/ep
OUT=${OUT:-results/tmp}; mkdir -p "$OUT" "$W"
REPO=$W/repo  # a copy: each device call re-sends the tree, the detached run must not lose it
# The machine's rules: no NVLink SHArP / multicast.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda MAX_JOBS=16 \
       FLASHINFER_WORKSPACE_BASE=/tmp/fiws FLASHINFER_CUDA_ARCH_LIST=9.0a MOE_CORE_CACHE=/tmp/moecache \
       MOE_HOOK_TIMEOUT=60 DE_LOG=$W/deepep-build.log DG_LOG=$W/deepgemm-build.log

stage() { echo "$(date -u +%T) $*" | tee -a "$W/stages.txt"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $W/NAME.txt, record rc
    local name=$1 limit=$2; shift 2
    stage "$name"
    timeout "$limit" "$@" > "$W/$name.txt" 2>&1
    stage "$name rc=$?"
}

pipeline() {
    cd "$REPO"
    stage "start $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
    source scripts/gpu_build_deepep.sh && stage "deepep built" || stage "deepep build FAILED (deepep-build.log)"
    if [ -d .carry/deepgemm ]; then
        source scripts/gpu_build_deepgemm.sh && stage "deepgemm built" || stage "deepgemm build FAILED"
    fi
    if ls .carry/fi/*.whl >/dev/null 2>&1; then
        for kind in ${FI_KINDS-bf16 fp8_block128}; do
            step "build-$kind" 600 python3 -m moe_plugin_flashinfer_cutlass.build "$kind"
        done
    fi
    step plugins 120 python3 -m moe_core.cli plugins
    if [ -f "${DE_SRC:-/tmp/deepep-src}/.built" ]; then  # DeepEP's own numbers, same machine
        (cd "${DE_SRC:-/tmp/deepep-src}" &&
         step deepep_intranode 300 python3 tests/test_intranode.py --num-processes 2 &&
         step deepep_low_latency 300 python3 tests/test_low_latency.py --num-processes 2 --num-experts 16)
    fi
    step gpu_tests 900 python3 -m pytest -m gpu tests/test_gpu_ep.py plugins/deepep -v -rs \
        -p no:cacheprovider --moe-conformance=
    step ep_nccl 300 torchrun --nproc_per_node 2 tests/ep_worker.py --backend nccl --out "$W/ep_nccl.json"
    step dispatch_bench 900 torchrun --nproc_per_node 2 benchmarks/dispatch_bench.py --out "$W/dispatch_bench.json"
    touch "$W/done"
}

collect() {
    cp "$W"/stages.txt "$W"/*.json "$OUT/" 2>/dev/null
    tar czf "$OUT/ep.tgz" -C "$W" --exclude repo . 2>/dev/null
    cat "$W/stages.txt" 2>/dev/null
}

poll() {
    local until=$(( $(date +%s) + ${1:-540} ))
    while [ ! -f "$W/done" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 10; done
    collect
    if [ -f "$W/done" ]; then
        echo "done"; tail -n 30 "$W/gpu_tests.txt"; grep -A40 "dispatch + combine" "$W/dispatch_bench.txt"
    fi
}

case "${1:-start}" in
    start)
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
            .carry/*.whl $(ls .carry/fi/*.whl 2>/dev/null) || exit 1
        rm -rf "$REPO" "$W/done" && mkdir -p "$REPO" && cp -r . "$REPO"
        { date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc;
          python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__)"; } \
            | tee "$W/env.txt"
        setsid nohup bash "$REPO/scripts/gpu_ep.sh" pipeline > "$W/pipeline.log" 2>&1 < /dev/null &
        poll "${2:-540}" ;;
    pipeline) pipeline ;;
    poll) poll "${2:-540}" ;;
esac
