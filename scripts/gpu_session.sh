#!/usr/bin/env bash
# One GPU session on the device machine (repo root; .carry/ carried, built on a networked
# machine by scripts/build_carry.sh (our wheels), fetch_deepgemm.sh, fetch_flashinfer.sh,
# fetch_transformers.sh, fetch_vllm.sh and, for two GPUs, fetch_deepep.sh).
#   builds      DeepGEMM, the FlashInfer CUTLASS kinds and (two GPUs) DeepEP, side by side
#   lane A      the Triton tile tuning (its table is used by every later benchmark), then
#               benchmarks/layer_bench.py on $SHAPES_A, permute_bench.py
#   lane B      every one-GPU test (pytest -m gpu, 4 workers) beside the conformance kit on
#               SM90 (KIT=0: without), then layer_bench on $SHAPES_B, transformers_bench.py,
#               layer_bench --profile on $PROFILE_ARGS (each row's kernels)
#   ep          (two GPUs) DeepEP's own tests, the EP GPU tests, tests/ep_worker.py over NCCL,
#               benchmarks/dispatch_bench.py, transformers' EP=2 benchmark
# With two GPUs lanes A and B run at once, one GPU each (B's benchmarks wait for A's tuning);
# with one: $STAGES in order, by default the tests, the tuning, layer_bench A, transformers,
# layer_bench B, the profile, permute_bench (most wanted first, in case the device time runs
# out). Each step has a time limit; nothing later depends on an earlier step passing.
# The whole outlives one 10-minute device command, so it runs detached and is polled:
#   bash scripts/gpu_session.sh start 540   # install, launch, poll up to 540 s
#   bash scripts/gpu_session.sh poll 560    # later calls on the same warm machine
# Every log, JSON and plot lands in /tmp/gs and, on every poll, in $OUT (stages.txt, the
# JSON and plots, session.tgz with the logs).
set -uo pipefail
W=/tmp/gs
OUT=${OUT:-results/tmp}; mkdir -p "$OUT" "$W"
REPO=$W/repo  # a copy: each device call re-sends the tree, the detached run must not lose it
# The machine's rules: no NVLink SHArP / multicast.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda MAX_JOBS=16 \
       FLASHINFER_WORKSPACE_BASE=/tmp/fiws FLASHINFER_CUDA_ARCH_LIST=9.0a MOE_CORE_CACHE=/tmp/moecache \
       MOE_HOOK_TIMEOUT=60 DE_LOG=$W/deepep-build.log DG_LOG=$W/deepgemm-build.log
SHAPES_A=${SHAPES_A:-deepseek-v3-ep8,qwen3-30b-a3b}  # lane A also tunes the Triton tiles for all four
SHAPES_B=${SHAPES_B:-gpt-oss-20b,nemotron-3-nano-tp8}
TUNE_ARGS=${TUNE_ARGS:---buckets 1,4,16,64,128,256,512,2048}
LB_TOKENS=${LB_TOKENS:-1,4,16,64,256,512,2048}  # 2,048 tokens at top-8 = 16K routed rows
LB_TIERS=${LB_TIERS:-64,512}  # host rows from a plan per token range: 1-64, 65-256, 257-512, more ("": per regime)
# One GPU: the steps, in order (leave out "tune" to keep the shipped Triton tile table).
ONE_GPU_STAGES="tests_b tune lane_a transformers_1gpu lane_b profile permute dg_tests"
STAGES=${STAGES:-tests_b tune lane_a transformers_1gpu lane_b profile permute}
KIT=${KIT:-1}                # 0: no conformance kit beside the GPU tests
# Rows profiled kernel by kernel (layer_bench --profile): what the host pays beyond the kernels.
PROFILE_ARGS=${PROFILE_ARGS:---shapes qwen3-30b-a3b,deepseek-v3-ep8 --tokens 16,2048 --no-tune --contenders deepgemm,triton,DeepGEMM,vLLM}
NGPU=$(nvidia-smi -L | wc -l)

use_tuned_table() {  # later steps read the table the tuning wrote (named after the GPU), if any
    ls "$W"/triton/*.json >/dev/null 2>&1 && export MOE_TRITON_CONFIGS=$W/triton
}

wait_for() {  # wait_for STEP: until the other lane logs STEP's exit, at most 15 min (then its table)
    local until=$(( $(date +%s) + 900 ))
    until grep -q "$1 rc=" "$W/stages.txt" 2>/dev/null || [ "$(date +%s)" -ge "$until" ]; do sleep 5; done
    use_tuned_table
}

stage() { echo "$(date -u +%T) $*" | tee -a "$W/stages.txt"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $W/NAME.txt, record rc
    local name=$1 limit=$2; shift 2
    stage "$name"
    timeout "$limit" "$@" > "$W/$name.txt" 2>&1
    stage "$name rc=$?"
}

builds() {
    [ -d .carry/deepgemm ] && (source scripts/gpu_build_deepgemm.sh >/dev/null) &
    [ "$NGPU" -ge 2 ] && [ -d .carry/deepep ] && (source scripts/gpu_build_deepep.sh >/dev/null) &
    (for kind in bf16 fp8_block128; do
        step "build-$kind" 600 python3 -m moe_plugin_flashinfer_cutlass.build "$kind"; done) &
    wait
    # Built (or failed): these only put the built trees on PYTHONPATH now.
    [ -d .carry/deepgemm ] && { source scripts/gpu_build_deepgemm.sh && stage "deepgemm built" || stage "deepgemm build FAILED"; }
    [ "$NGPU" -ge 2 ] && [ -d .carry/deepep ] && { source scripts/gpu_build_deepep.sh && stage "deepep built" || stage "deepep build FAILED"; }
}

tune() {  # the Triton tile table every later step uses
    step triton_tune 600 python3 benchmarks/triton_moe_tune.py --out "$W/triton" $TUNE_ARGS
    use_tuned_table
}

lane_a() {
    step layer_bench_a 900 python3 benchmarks/layer_bench.py --shapes "$SHAPES_A" --tokens "$LB_TOKENS" --tiers "$LB_TIERS" --out "$W/layer_bench_a.json"
}

permute() {
    step permute_bench 300 python3 benchmarks/permute_bench.py --out "$W/permute_bench.json"
}

dg_tests() {  # the DeepGEMM plugin's GPU tests alone (after a change to its kernels)
    step dg_tests 600 python3 -m pytest -m gpu plugins/deepgemm -n 4 -rA -p no:cacheprovider --moe-conformance=
}

profile() {
    step profile 420 python3 benchmarks/layer_bench.py --profile $PROFILE_ARGS --out "$W/profile.json"
}

tests_b() {  # the GPU tests (4 pytest-xdist workers: mostly JIT compiles) beside the kit
    step gpu_tests 900 python3 -m pytest -m gpu tests plugins -n 4 -rA --durations=25 -p no:cacheprovider \
        --moe-conformance= --ignore=tests/test_gpu_ep.py --ignore=tests/test_gpu_transformers_ep.py &
    [ "$KIT" = 1 ] && step kit 600 python3 -m pytest -p no:cacheprovider -q -rs \
        --moe-conformance=reference,deepgemm,flashinfer_cutlass,triton -k "sm90" \
        "$(python3 -c 'import moe_core.conformance.pytest_plugin as p; print(p.KIT)')" &
    wait
}

lane_b() {
    step layer_bench_b 900 python3 benchmarks/layer_bench.py --shapes "$SHAPES_B" --tokens "$LB_TOKENS" --tiers "$LB_TIERS" --out "$W/layer_bench_b.json"
}

transformers_1gpu() {
    step transformers_1gpu 420 python3 benchmarks/transformers_bench.py --preset qwen3-30b-a3b,deepseek-v3-64e \
        --prefill 512,2048 --tiers "$LB_TIERS" --out "$W/transformers_1gpu.json" --plot "$W/transformers_1gpu.png"
}

ep() {
    if [ -f "${DE_SRC:-/tmp/deepep-src}/.built" ]; then  # DeepEP's own numbers, same machine
        (cd "${DE_SRC:-/tmp/deepep-src}" &&
         step deepep_intranode 300 python3 tests/test_intranode.py --num-processes 2 &&
         step deepep_low_latency 300 python3 tests/test_low_latency.py --num-processes 2 --num-experts 16)
    fi
    step ep_tests 900 python3 -m pytest -m gpu tests/test_gpu_ep.py tests/test_gpu_transformers_ep.py \
        plugins/deepep -v -s -rs -p no:cacheprovider --moe-conformance=
    step ep_nccl 300 torchrun --nproc_per_node 2 tests/ep_worker.py --backend nccl --out "$W/ep_nccl.json"
    step dispatch_bench 900 torchrun --nproc_per_node 2 benchmarks/dispatch_bench.py --out "$W/dispatch_bench.json"
    step transformers_ep2 420 torchrun --nproc_per_node 2 benchmarks/transformers_bench.py --ep 2 \
        --preset qwen3-30b-a3b --out "$W/transformers_ep2.json" --plot "$W/transformers_ep2.png"
}

pipeline() {
    cd "$REPO"
    stage "start $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $NGPU"
    builds
    step plugins 120 python3 -m moe_core.cli plugins
    if [ "$NGPU" -ge 2 ]; then
        (export CUDA_VISIBLE_DEVICES=0; tune; lane_a; permute) &
        (export CUDA_VISIBLE_DEVICES=1; tests_b; wait_for triton_tune; lane_b; transformers_1gpu; profile) & wait
        ep
    else  # correctness first: a benchmark of a wrong kernel is worth nothing
        for s in $STAGES; do
            case " $ONE_GPU_STAGES " in
                *" $s "*) "$s" ;;
                *) stage "$s rc=unknown stage (STAGES takes: $ONE_GPU_STAGES)" ;;
            esac
        done
    fi
    touch "$W/done"
}

collect() {
    cp "$W"/stages.txt "$W"/*.json "$W"/*.png "$OUT/" 2>/dev/null
    [ -d "$W/triton" ] && cp -r "$W/triton" "$OUT/"
    tar czf "$OUT/session.tgz" -C "$W" --exclude repo . 2>/dev/null
    cat "$W/stages.txt" 2>/dev/null
}

poll() {
    local until=$(( $(date +%s) + ${1:-540} ))
    while [ ! -f "$W/done" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 10; done
    collect
    [ -f "$W/done" ] && { echo done; tail -n 5 "$W/gpu_tests.txt"; }
}

case "${1:-start}" in
    start)
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
            .carry/*.whl .carry/fi/*.whl || exit 1
        if ls .carry/tf/*.whl >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
                .carry/tf/*.whl || exit 1
        fi
        # a second pipeline on a warm machine: the last one's stages are kept apart, not re-read
        [ -f "$W/stages.txt" ] && mv "$W/stages.txt" "$W/stages-$(date +%H%M%S).txt"
        rm -rf "$REPO" "$W/done" && mkdir -p "$REPO" && cp -r . "$REPO"
        { date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc;
          python3 -c "import torch, triton, flashinfer, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'triton', triton.__version__, 'flashinfer', flashinfer.__version__, 'transformers', transformers.__version__)"; } \
            | tee "$W/env.txt"
        setsid nohup bash "$REPO/scripts/gpu_session.sh" pipeline > "$W/pipeline.log" 2>&1 < /dev/null &
        poll "${2:-540}" ;;
    pipeline) pipeline ;;
    poll) poll "${2:-540}" ;;
    *) echo "usage: $0 start|poll [SECONDS]"; exit 2 ;;
esac
