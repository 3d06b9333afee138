"""Dispatch + combine time of the chosen dispatcher next to a plain NCCL all-to-all of the
same bytes (the floor for this path). Run on every rank of one host:

    torchrun --nproc_per_node 2 benchmarks/dispatch_bench.py [--out results.json]

Shapes: 128 (decode) and 4096 (prefill) tokens per rank, hidden 7168 and 4096, 256
experts top-8 (DeepSeek-V3-like routing, uniform random), bf16 and fp8 on the wire. The
expert computation is left out (identity), so the time is the dispatcher's alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import torch.distributed as dist

from moe_core import Host, MoESpec
from moe_core.arch import detect_arch

EXPERTS, TOP_K = 256, 8


def _time(fn, iters: int, device: str) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs, all ranks in step."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        sync()
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def bench_case(host: Host, rank: int, world: int, tokens: int, hidden: int, wire: str, iters: int,
               device: str):
    decode = tokens <= 256
    spec = MoESpec(num_experts=EXPERTS, top_k=TOP_K, hidden_size=hidden, intermediate_size=2048,
                   tp_size=world, ep_size=world, rank=rank, a2a="deepep_ll" if decode else "deepep_normal",
                   arch=detect_arch() if device == "cuda" else "cpu", max_tokens=tokens)
    plan = host.resolve(spec, force="reference:loop")  # the runner does not run here
    # The wire dtype is the runner's choice; here both are measured on the same layout.
    plan = dataclasses.replace(plan, dispatch=dataclasses.replace(plan.dispatch, dtype=wire))
    dispatcher = host.make_dispatcher(plan)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(tokens, hidden, generator=gen).bfloat16().to(device)
    ids = torch.rand(tokens, EXPERTS, generator=gen).topk(TOP_K, dim=1).indices.to(device)
    w = torch.full((tokens, TOP_K), 1.0 / TOP_K, device=device)

    def round_trip():  # identity experts: the expert output is the dispatched input
        d = dispatcher.dispatch(x, ids, w)
        return dispatcher.combine(d.x, d)

    out = round_trip()  # identity experts + weights summing to 1 give x back
    err = ((out.float() - x.float()).norm() / x.float().norm()).item()
    ms = _time(round_trip, iters, device)
    # The floor: the same bytes between the same peers, as two plain all_to_all_single calls
    # (payload out, one bf16 row back per token and peer), nothing else.
    hit = torch.zeros(tokens, world, dtype=torch.bool, device=device).scatter_(
        1, ids // spec.local_experts, True)
    sent = hit.sum(0)
    got = torch.empty_like(sent)
    dist.all_to_all_single(got, sent)
    sent, got = sent.tolist(), got.tolist()
    row_bytes = dispatcher.codec.row_bytes
    out_a = [n * row_bytes for n in sent]
    in_a = [n * row_bytes for n in got]
    out_b = [n * hidden * 2 for n in got]
    in_b = [n * hidden * 2 for n in sent]
    bufs = [torch.empty(sum(n), dtype=torch.uint8, device=device) for n in (out_a, in_a, out_b, in_b)]

    def floor():
        dist.all_to_all_single(bufs[1], bufs[0], in_a, out_a)
        dist.all_to_all_single(bufs[3], bufs[2], in_b, out_b)

    floor_ms = _time(floor, iters, device)
    moved = sum(out_a) + sum(out_b)  # bytes this rank sends, self included
    return dict(tokens=tokens, hidden=hidden, wire=plan.dispatch.wire.value, layout=plan.dispatch.layout.value,
                dispatcher=str(plan.dispatcher), ms=ms, gbps=moved / ms / 1e6, floor_ms=floor_ms,
                floor_gbps=moved / floor_ms / 1e6, of_floor=floor_ms / ms, round_trip_err=err,
                bytes_sent=moved)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--backend", default="nccl", help="nccl (GPUs) or gloo (a CPU smoke run)")
    ap.add_argument("--tokens", default="128,4096")
    a = ap.parse_args()
    dist.init_process_group(a.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if str(a.backend) == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    host = Host()
    rows = []
    for t in map(int, a.tokens.split(",")):
        for h in (7168, 4096):
            for wire in ("bf16", "fp8"):
                rows.append(bench_case(host, rank, world, t, h, wire, a.iters, device))
                if rank == 0:
                    print(json.dumps(rows[-1]), flush=True)
    if rank == 0:
        from rich.console import Console
        from rich.table import Table

        name = torch.cuda.get_device_name() if device == "cuda" else "CPU (gloo)"
        table = Table(title=f"dispatch + combine, {world} x {name}, "
                            f"E={EXPERTS} top-{TOP_K}")
        for col in ("tokens/rank", "hidden", "wire", "layout", "dispatcher", "ms", "GB/s sent",
                    "a2a floor ms", "floor GB/s", "floor/ours", "round-trip err"):
            table.add_column(col)
        for r in rows:
            table.add_row(str(r["tokens"]), str(r["hidden"]), r["wire"], r["layout"], r["dispatcher"],
                          f"{r['ms']:.3f}", f"{r['gbps']:.1f}", f"{r['floor_ms']:.3f}",
                          f"{r['floor_gbps']:.1f}", f"{r['of_floor']:.2f}", f"{r['round_trip_err']:.1e}")
        Console(width=200).print(table)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
