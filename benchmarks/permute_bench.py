"""Permute (+ FP8 quant) and combine on the GPU: moe_core.kernels' device path vs the old
host-synchronising torch path, then the DeepGEMM layer's standard call through each path
against its two GEMMs alone (what "DeepGEMM called directly" costs).

Shape: DeepSeek-V3 experts of rank 3 under EP 8 (32 local of 256, H 7168, I 2048, top-8);
T tokens per rank (T x 8 routed slots, about an eighth of them local), softmax top-k routing.

    python benchmarks/permute_bench.py [--tokens 4,128,512,2048] [--out permute.json]
        [--layer-tokens 4,32,128,256,512,1024,2048] [--no-layer]

Columns: ms per call (CUDA events, eager; "graph": replays of a captured CUDA graph), GB/s
of the bytes the step must move (permute: local slots' rows read as bf16 and written in the
runner's format; combine: local slots' bf16 rows read, T bf16 rows written). The layer
table gives each standard-call path's time, its GEMMs' time on the same layout, and the
GEMMs on exactly the used rows (the contiguous layout a host-synchronised caller would
build), and the path the runner's own rule (``DeepGemmRunner.uses_masked``) picks at that T,
to hold against the masked/contiguous crossover measured here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json

import torch
from rich.console import Console
from rich.table import Table

from common import timed

from moe_core.graphs import capture
from moe_core.kernels.group_quant import quantize_groups
from moe_core.kernels.permute import permute_contiguous, permute_masked, unpermute
from moe_core.runner import combine, contiguous_layout
from moe_core.sizes import round_up

E, H, I, K, EXPERTS, RANK = 32, 7168, 2048, 8, 256, 3
FIRST = E * RANK
ALIGN = MASKED_TILE = 128


def routing(T: int, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(T, H, device="cuda", generator=gen).to(torch.bfloat16)
    logits = torch.randn(T, EXPERTS, device="cuda", generator=gen)
    w, ids = logits.softmax(-1).topk(K, dim=-1)
    return x, (w / w.sum(-1, keepdim=True)), ids


def graph_ms(fn, iters: int = 50) -> float:
    """ms per replay of ``fn`` captured in a CUDA graph (warmed up outside the capture)."""
    return timed(capture(fn).replay, iters)[0]


# -- the path this replaces (main before issue 13): host syncs, index_put, argsort --------
def old_permute(x, ids, fp8: bool):
    rows, offsets, tokens, pairs = contiguous_layout(x, ids, FIRST, E)
    counts = offsets.diff()
    padded = (counts + ALIGN - 1) // ALIGN * ALIGN
    starts = padded.cumsum(0) - padded
    expert = torch.repeat_interleave(torch.arange(E, device=x.device), counts)
    dst = starts[expert] + torch.arange(rows.shape[0], device=x.device) - offsets[:-1][expert]
    n = int(padded.sum())
    m_indices = torch.full((n,), -1, dtype=torch.int32, device=x.device)
    m_indices[dst] = expert.to(torch.int32)
    if fp8:
        src = torch.full((n,), -1, dtype=torch.int64, device=x.device)
        src[dst] = torch.arange(rows.shape[0], device=x.device)
        a = quantize_groups(rows, src)
    else:
        a = rows.new_zeros(n, H)
        a[dst] = rows
    return a, m_indices, dst, tokens, pairs


def old_combine(y, dst, tokens, pairs, w, T):
    return combine(y[dst], tokens, pairs, w, T).to(torch.bfloat16)


def kernel_rows(tokens: list[int]) -> list[dict]:
    out = []
    for T in tokens:
        x, w, ids = routing(T)
        local = int(((ids >= FIRST) & (ids < FIRST + E)).sum())
        for fp8 in (False, True):
            fmt = "fp8" if fp8 else "bf16"
            moved = local * H * 2 + local * H * (1 if fp8 else 2) + (local * H // 128 * 4 if fp8 else 0)
            steps = {
                "old: argsort + index_put + syncs": lambda: old_permute(x, ids, fp8),
                "contiguous (align + gather)": lambda: permute_contiguous(x, ids, FIRST, E, ALIGN, fp8=fp8),
                "masked (align + scatter)": lambda: permute_masked(x, ids, FIRST, E, round_up(T, MASKED_TILE),
                                                                   fp8=fp8),
            }
            for name, fn in steps.items():
                ms = timed(fn)[0]
                g = None if name.startswith("old") else graph_ms(fn)
                out.append(dict(step="permute", path=name, tokens=T, fmt=fmt, local_slots=local, ms=ms,
                                graph_ms=g, gbs=moved / ms / 1e6))
        # combine: the runner's bf16 output rows back to tokens
        a, _, dst, tokens_, pairs = old_permute(x, ids, False)
        p = permute_contiguous(x, ids, FIRST, E, ALIGN, fp8=False)
        moved = local * H * 2 + T * H * 2
        for name, fn in {"old: index_add fp32 + gather": lambda: old_combine(a, dst, tokens_, pairs, w, T),
                         "weighted_reduce": lambda: unpermute(p.rows, p.slot_rows, w)}.items():
            ms = timed(fn)[0]
            g = None if name.startswith("old") else graph_ms(fn)
            out.append(dict(step="combine", path=name, tokens=T, fmt="bf16", local_slots=local, ms=ms,
                            graph_ms=g, gbs=moved / ms / 1e6))
    return out


def layer_rows(tokens: list[int]) -> list[dict]:
    import moe_plugin_deepgemm as plugin
    from moe_core import Host, spec_for_model
    from moe_core.registry import Registry
    from moe_core.synthetic import random_weights, weight_bytes

    reg = Registry.builtin()
    reg.register(plugin, "deepgemm")
    host = Host(reg)
    out = []
    for quant in ("bf16", "fp8_block128"):
        spec = spec_for_model("deepseek-ai/DeepSeek-V3", quant=quant, tp=8, ep=8, rank=RANK, arch="auto",
                              max_tokens=max(tokens))
        plan = host.resolve(spec)
        layer = host.load(plan, random_weights(spec), check_values=False)
        runner = layer.runner
        per_expert = weight_bytes(spec) / E
        for T in tokens:
            x, w, ids = routing(T)
            busy = int(torch.unique(ids[(ids >= FIRST) & (ids < FIRST + E)]).numel())
            runner.force_path = None
            picks = "masked" if runner.uses_masked(T) else "contiguous"
            for path in ("masked", "contiguous"):
                runner.force_path = path
                fn = lambda: layer(x, w, ids)  # noqa: E731
                ms, first = timed(fn)
                g = graph_ms(fn)
                if path == "masked":
                    p = permute_masked(x, ids, FIRST, E, round_up(T, MASKED_TILE), fp8=runner.fp8)
                    expected = max(1, -(-T * K // EXPERTS))
                    gemm = lambda: runner._masked_gemms(p.rows, p.masked_m, expected)  # noqa: E731
                    exact = None
                else:
                    p = permute_contiguous(x, ids, FIRST, E, ALIGN, fp8=runner.fp8)
                    gemm = lambda: runner._contiguous_gemms(p.rows, p.m_indices)  # noqa: E731
                    used = int(p.routes.rows_used)
                    rows = ((p.rows[0][:used].contiguous(), p.rows[1][:used].t().contiguous().t())
                            if runner.fp8 else p.rows[:used].contiguous())
                    m_used = p.m_indices[:used].contiguous()
                    exact = timed(lambda: runner._contiguous_gemms(rows, m_used))[0]
                gemm_ms = timed(gemm)[0]
                out.append(dict(step="layer", quant=quant, path=path, tokens=T, busy_experts=busy, ms=ms,
                                graph_ms=g, gemms_ms=gemm_ms, exact_rows_gemms_ms=exact, first_call_s=first,
                                weight_gbs=busy * per_expert / g / 1e6, runner_picks=picks))
        runner.force_path = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="4,128,512,2048")
    ap.add_argument("--layer-tokens", default="4,32,128,256,512,1024,2048")
    ap.add_argument("--no-layer", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    console = Console(width=180)
    rows = kernel_rows([int(t) for t in args.tokens.split(",")])
    table = Table(title=f"permute / combine, DeepSeek-V3 EP8 rank (E={E}, H={H}, top-{K}), "
                        f"{torch.cuda.get_device_name()}")
    for col in ("step", "T", "local slots", "format", "path", "ms", "graph ms", "GB/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["step"], str(r["tokens"]), str(r["local_slots"]), r["fmt"], r["path"], f"{r['ms']:.4f}",
                      "-" if r["graph_ms"] is None else f"{r['graph_ms']:.4f}", f"{r['gbs']:.0f}")
    console.print(table)
    if not args.no_layer and importlib.util.find_spec("deep_gemm") is not None:
        layer = layer_rows([int(t) for t in args.layer_tokens.split(",")])
        rows += layer
        t = Table(title="DeepGEMM layer, standard call: each path vs its GEMMs alone")
        for col in ("quant", "T", "busy experts", "path", "call ms", "graph ms", "GEMMs ms",
                    "GEMMs on used rows ms", "weights GB/s (graph)", "runner picks"):
            t.add_column(col, justify="right")
        for r in layer:
            t.add_row(r["quant"], str(r["tokens"]), str(r["busy_experts"]), r["path"], f"{r['ms']:.3f}",
                      f"{r['graph_ms']:.3f}", f"{r['gemms_ms']:.3f}",
                      "-" if r["exact_rows_gemms_ms"] is None else f"{r['exact_rows_gemms_ms']:.3f}",
                      f"{r['weight_gbs']:.0f}", r["runner_picks"])
        console.print(t)
        for quant in ("bf16", "fp8_block128"):
            by = {(r["tokens"], r["path"]): r["graph_ms"] for r in layer if r["quant"] == quant}
            faster = [T for T, p in by if p == "masked" and by[(T, "masked")] <= by[(T, "contiguous")]]
            picked = sorted({r["tokens"] for r in layer
                             if r["quant"] == quant and r["runner_picks"] == "masked"})
            console.print(f"{quant}: the masked path is at least as fast at T = {sorted(faster)}; "
                          f"DeepGemmRunner.uses_masked picks it at T = {picked}")
    elif not args.no_layer:
        console.print("deep_gemm not importable: layer table skipped (scripts/gpu_session.sh builds it)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
