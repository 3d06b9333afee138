"""Tune the Triton fused MoE's tiles on this GPU; write ``<device name>.json`` for the plugin.

For each shape of issue 13 (DeepSeek-V3 under EP 8, Qwen3-30B-A3B, gpt-oss-20b, Nemotron-3-Nano
under TP 8), each weight format the plugin runs it in, and each token bucket, it times both
grouped GEMMs over a small grid of tiles (CUDA graphs of 10 launches, CUDA events) on a
random routing (then the best tile with each row-block walk of ``GROUP_MS``), keeps the
``block_m`` whose best GEMM1 + best GEMM2 is fastest, then times
the whole layer with the table it wrote (and with the alignment's torch-op path instead of
its Triton kernels) and prints the bandwidth of the weights it reads against this GPU's measured copy
bandwidth. Decode buckets get most of the grid. About 5 minutes on one H200 before the
row-block walks were added (mostly Triton compiles), more with them; ``--shapes`` and
``--buckets`` narrow it.

    python benchmarks/triton_moe_tune.py --out results/tmp/triton     # writes NVIDIA_H200.json there
    cp results/tmp/triton/NVIDIA_H200.json plugins/triton/src/moe_plugin_triton/configs/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from moe_core import spec_for_model
from moe_core.graphs import capture
from moe_core.kernels.align import align_by_expert, align_torch
from moe_core.kernels.group_quant import quantize_groups
from moe_plugin_triton import constraints
from moe_plugin_triton.configs import CONFIG_DIR_ENV, TileConfig, gemm_key, table_name

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ceilings as measured  # noqa: E402
import layer_bench  # noqa: E402

NEMOTRON = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"
SHAPES = {
    "deepseek-v3-ep8": lambda: spec_for_model("deepseek-ai/DeepSeek-V3", tp=8, ep=8, arch="auto"),
    "qwen3-30b-a3b": lambda: spec_for_model("Qwen/Qwen3-30B-A3B", arch="auto"),
    "gpt-oss-20b": lambda: spec_for_model("openai/gpt-oss-20b", arch="auto"),
    "nemotron-3-nano-tp8": lambda: spec_for_model(NEMOTRON, tp=8, arch="auto"),
}
DECODE, PREFILL = (1, 2, 4, 8, 16, 32, 64, 128, 256), (1024, 4096)
#: (block_n, block_k, num_warps, num_stages) tried per bucket kind and dtype.
DECODE_TILES = {
    "bf16": [(32, 128, 4, 4), (64, 128, 4, 3), (64, 128, 4, 4), (128, 64, 4, 4), (128, 128, 4, 3),
             (64, 256, 4, 3)],
    "fp8_block128": [(32, 128, 4, 4), (64, 128, 4, 3), (64, 128, 4, 4), (64, 128, 4, 5),
                     (128, 128, 4, 3), (128, 128, 4, 4)],
}
PREFILL_TILES = {
    "bf16": [(128, 64, 4, 4), (128, 64, 8, 4), (256, 64, 8, 3), (256, 64, 8, 4), (128, 128, 8, 3)],
    "fp8_block128": [(128, 128, 4, 3), (128, 128, 8, 3), (256, 128, 8, 3)],
}


#: Row blocks walked together, tried on each bucket's best tile (vLLM's H200 tables use 1 to
#: 64; its Qwen3 fp8 tile at 16 tokens walks 32 where ours walked 1 and its GEMMs took 104
#: against our 117 µs, benchmark profile 2026-12-01).
GROUP_MS = (1, 8, 16, 32)
#: Where the tuning tensors live (tests run the selection on a CPU with stand-in kernels).
DEVICE = "cuda"


def block_ms(rows_per_expert: float, prefill: bool) -> list[int]:
    if prefill:
        return [64, 128]
    if rows_per_expert <= 8:
        return [16]
    if rows_per_expert <= 24:
        return [16, 32, 64]
    return [32, 64] if rows_per_expert <= 48 else [64, 128]


def graph_time_us(fn, launches: int = 10, replays: int = 5) -> float:
    """Microseconds per call: CUDA events around replays of a graph of ``launches`` calls."""
    graph = capture(lambda: [fn() for _ in range(launches)], warmups=1)  # compiles outside
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (launches * replays)


def make_weights(spec, dtype: str):
    """Random weights straight on the GPU (timing only: values need not be the reference's)."""
    E, R, H, I = spec.local_experts, spec.w13_rows, spec.hidden_size, spec.intermediate_per_partition
    dev = DEVICE
    w = {"w13": torch.randn(E, R, H, device=dev) / math.sqrt(H), "w2": torch.randn(E, H, I, device=dev) / math.sqrt(I)}
    if dtype == "fp8_block128":
        w = {k: v.to(torch.float8_e4m3fn) for k, v in w.items()}
        halves = 2 if spec.activation.gated else 1
        w["w13_scale"] = torch.rand(E, halves * -(-I // 128), -(-H // 128), device=dev) + 0.5
        w["w2_scale"] = torch.rand(E, -(-H // 128), -(-I // 128), device=dev) + 0.5
    else:
        w = {k: v.to(torch.bfloat16) for k, v in w.items()}
    if spec.has_bias:
        w["w13_bias"] = torch.randn(E, R, device=dev) * 0.1
        w["w2_bias"] = torch.randn(E, H, device=dev) * 0.1
    return w


def routing(spec, tokens: int):
    """``(topk_weights, topk_ids)`` as layer_bench draws them (top-k over the local experts:
    a rank's load after dispatch), so the tiles are tuned for the routing they are timed on."""
    _, weights, ids = layer_bench.routed_inputs(spec, tokens, DEVICE)
    return weights, ids


def tune_bucket(kernels, spec, dtype, w, tokens):
    """{block_m: (best gemm1 (us, config), best gemm2 (us, config))} for one bucket."""
    H, I, k = spec.hidden_size, spec.intermediate_per_partition, spec.top_k
    x = torch.randn(tokens, H, device=DEVICE).to(torch.bfloat16)
    _, ids = routing(spec, tokens)
    fp8 = dtype == "fp8_block128"
    a, a_scale = quantize_groups(x) if fp8 else (x, None)
    prefill = tokens > 256
    rows_per_expert = tokens * k / spec.local_experts
    tiles = (PREFILL_TILES if prefill else DECODE_TILES)[dtype]
    if not prefill and rows_per_expert >= 32:  # DeepSeek-V3 at 256 tokens: 64 rows an expert,
        tiles = tiles + [t for t in PREFILL_TILES[dtype] if t not in tiles]  # compute-bound tiles too
    out = {}
    for bm in block_ms(rows_per_expert, prefill):
        routes = align_by_expert(ids, spec.first_expert, spec.local_experts, bm)
        rows, n = routes.sorted_slots.shape[0], ids.numel()
        h = torch.empty(rows, w["w13"].shape[1], dtype=torch.bfloat16, device=DEVICE)
        act = torch.empty(rows, I, dtype=torch.float8_e4m3fn if fp8 else torch.bfloat16, device=DEVICE)
        act_scale = torch.empty(-(-I // 128), rows, device=DEVICE).t() if fp8 else None
        y = torch.empty(rows, H, dtype=torch.bfloat16, device=DEVICE)
        best = []
        for gemm in (1, 2):
            times = []

            def time_tile(cfg, gemm=gemm, times=times):
                if gemm == 1:
                    call = lambda: kernels.launch_gemm(  # noqa: E731
                        a, w["w13"], h, routes.sorted_slots, routes.block_expert, cfg, num_slots=n,
                        gather=True, top_k=k, a_scale=a_scale, w_scale=w.get("w13_scale"),
                        bias=w.get("w13_bias"), split_n=I if spec.activation.gated else None)
                else:
                    call = lambda: kernels.launch_gemm(  # noqa: E731
                        act, w["w2"], y, routes.sorted_slots, routes.block_expert, cfg, num_slots=n,
                        gather=False, a_scale=act_scale, w_scale=w.get("w2_scale"), bias=w.get("w2_bias"))
                try:
                    times.append((graph_time_us(call), cfg))
                except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: not a candidate
                    print(f"    skip {cfg}: {type(e).__name__}: {str(e)[:80]}", file=sys.stderr)
                if gemm == 1 and len(times) == 1:  # fill the activation rows GEMM2 reads
                    kernels.launch_activation(h, act, routes.slot_rows, intermediate=I,
                                              act=kernels.activation_code(spec), scale=act_scale,
                                              limit=spec.swiglu_limit, alpha=spec.swiglu_alpha)

            for bn, bk, warps, stages in tiles:
                time_tile(TileConfig(bm, bn, bk, 1 if not prefill else 8, warps, stages))
            if times:  # then the best tile's other row-block walks
                top = min(times, key=lambda t: t[0])[1]
                for g in GROUP_MS:
                    if g != top.group_m:
                        time_tile(dataclasses.replace(top, group_m=g))
            best.append(min(times, key=lambda t: t[0]))
        out[bm] = tuple(best)
    return out


def layer_time(host, spec, dtype, w, tokens, core_align: bool = False) -> float:
    from moe_core.weights import MoEWeights

    plan = host.resolve(spec.replace(max_tokens=tokens), force=f"triton:{dtype}")
    layer = host.load(plan, MoEWeights(**w), check_values=False)
    if core_align:
        layer.runner.align = align_torch
    x = torch.randn(tokens, spec.hidden_size, device="cuda").to(torch.bfloat16)
    tw, ids = routing(spec, tokens)
    return graph_time_us(lambda: layer(x, tw, ids), launches=5, replays=4), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/tmp/triton"),
                    help="folder for <device>.json and the timings (tune.json)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--buckets", default=",".join(map(str, DECODE + PREFILL)))
    args = ap.parse_args()
    from moe_plugin_triton import kernels  # imports triton

    t0 = time.time()
    device = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    bw = measured.measure("cuda").hbm_copy_tbps * 1e3  # GB/s, the ceilings every bench uses
    print(f"{device}: copy bandwidth {bw:.0f} GB/s (read + write); triton {kernels.triton.__version__}")
    buckets = [int(b) for b in args.buckets.split(",")]
    gemms: dict[str, dict[str, dict]] = {}
    report = {"device": device, "copy_gbs": bw, "gemm_us": {}, "layer": []}
    specs = {name: SHAPES[name]() for name in args.shapes.split(",")}
    for name, base in specs.items():
        for dtype in ("bf16", "fp8_block128"):
            spec = base.replace(quant=dtype, max_tokens=max(buckets))
            if not next(v for v in constraints.verdicts(spec) if v.variant == dtype).supported:
                print(f"{name} {dtype}: the plugin declines it, not tuned")
                continue
            w = make_weights(spec, dtype)
            n1, k1, n2, k2 = spec.w13_rows, spec.hidden_size, spec.hidden_size, spec.intermediate_per_partition
            for tokens in buckets:
                per_bm = tune_bucket(kernels, spec, dtype, w, tokens)
                bm, ((t1, c1), (t2, c2)) = min(per_bm.items(), key=lambda kv: kv[1][0][0] + kv[1][1][0])
                gemms.setdefault(gemm_key(dtype, n1, k1), {})[str(tokens)] = c1.to_json()
                gemms.setdefault(gemm_key(dtype, n2, k2), {})[str(tokens)] = c2.to_json()
                report["gemm_us"][f"{name},{dtype},{tokens}"] = [t1, t2]
                print(f"{name:20s} {dtype:12s} T={tokens:5d} BM={bm:3d} gemm1 {t1:8.1f} us "
                      f"{c1.block_n}x{c1.block_k} w{c1.num_warps} s{c1.num_stages} | gemm2 {t2:8.1f} us "
                      f"{c2.block_n}x{c2.block_k} w{c2.num_warps} s{c2.num_stages}  [{time.time() - t0:.0f} s]",
                      flush=True)
            del w
    table = {"device": device, "triton": kernels.triton.__version__, "torch": torch.__version__,
             "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
             "command": "python benchmarks/triton_moe_tune.py " + " ".join(sys.argv[1:]), "gemms": gemms}
    path = args.out / table_name(device)
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} ({len(gemms)} GEMM shapes) after {time.time() - t0:.0f} s")

    # The whole layer with that table: bandwidth of the weights it reads.
    os.environ[CONFIG_DIR_ENV] = str(args.out)
    from moe_core import Host

    host = Host()
    print(f"\nlayer (CUDA graph), weights read / time vs copy bandwidth {bw:.0f} GB/s")
    for name, base in specs.items():
        for dtype in ("bf16", "fp8_block128"):
            spec = base.replace(quant=dtype, max_tokens=max(buckets))
            if not next(v for v in constraints.verdicts(spec) if v.variant == dtype).supported:
                continue
            w = make_weights(spec, dtype)
            per_expert = sum(t[0].numel() * t.element_size() for t in w.values() if t.dim() == 3)
            for tokens in buckets:
                us, ids = layer_time(host, spec, dtype, w, tokens)
                core_us, _ = layer_time(host, spec, dtype, w, tokens, core_align=True)
                local = ids - spec.first_expert
                hit = int(torch.unique(local[(local >= 0) & (local < spec.local_experts)]).numel())
                gbs = hit * per_expert / us / 1e3
                row = dict(shape=name, dtype=dtype, tokens=tokens, us=us, core_align_us=core_us,
                           experts_hit=hit, weight_gbs=gbs, pct_copy_bw=100 * gbs / bw)
                report["layer"].append(row)
                print(f"{name:20s} {dtype:12s} T={tokens:5d} {us:8.1f} us ({core_us:8.1f} with torch-op "
                      f"align)  {hit:3d} experts  {gbs:6.0f} GB/s = {row['pct_copy_bw']:5.1f}%", flush=True)
            del w
    (args.out / "tune.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
