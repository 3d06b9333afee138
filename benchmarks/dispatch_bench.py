"""Dispatch + combine time of the chosen dispatcher next to a plain NCCL all-to-all of the
same bytes (the floor for this path). Run on every rank of one host:

    torchrun --nproc_per_node 2 benchmarks/dispatch_bench.py [--out results.json]

Shapes: 128 (decode) and 4096 (prefill) tokens per rank, hidden 7168 and 4096, 256
experts top-8 (DeepSeek-V3-like routing, uniform random), bf16 and fp8 on the wire. The
expert computation is left out (identity), so the time is the dispatcher's alone.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from moe_core import Host, MoESpec
from moe_core.arch import detect_arch

EXPERTS, TOP_K = 256, 8


def _time(fn, iters: int) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs, all ranks in step."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def bench_case(host: Host, rank: int, world: int, tokens: int, hidden: int, wire: str, iters: int):
    a2a = "deepep_ll" if tokens <= 256 else "deepep_normal"
    spec = MoESpec(num_experts=EXPERTS, top_k=TOP_K, hidden_size=hidden, intermediate_size=2048,
                   tp_size=world, ep_size=world, rank=rank, a2a=a2a, arch=detect_arch(),
                   max_tokens=tokens, quant="fp8_block128" if wire == "fp8" else "bf16")
    plan = host.resolve(spec, force="reference:loop")  # the runner does not run here
    dispatcher = host.make_dispatcher(plan)
    gen = torch.Generator(device="cuda").manual_seed(rank)
    x = torch.randn(tokens, hidden, device="cuda", generator=gen).bfloat16()
    ids = torch.rand(tokens, EXPERTS, device="cuda", generator=gen).topk(TOP_K, dim=1).indices
    w = torch.full((tokens, TOP_K), 1.0 / TOP_K, device="cuda")

    def round_trip():  # identity experts: the expert output is the dispatched input
        d = dispatcher.dispatch(x, ids, w)
        return dispatcher.combine(d.x, d)

    out = round_trip()  # identity experts + weights summing to 1 give x back
    err = ((out.float() - x.float()).norm() / x.float().norm()).item()
    ms = _time(round_trip, iters)
    # Bytes this rank sends: payload rows out + partial sums back.
    hit = torch.zeros(tokens, world, dtype=torch.bool, device="cuda").scatter_(
        1, ids // spec.local_experts, True)
    rows_out = int(hit.sum())
    codec = getattr(dispatcher, "codec", None)
    row_bytes = codec.row_bytes if codec else hidden * 2
    sent = rows_out * row_bytes + rows_out * hidden * 2
    # The floor: one all_to_all_single per direction with the same bytes, even splits.
    per_peer = -(-rows_out * row_bytes // world)
    back_per_peer = -(-rows_out * hidden * 2 // world)
    send_a = torch.empty(per_peer * world, dtype=torch.uint8, device="cuda")
    recv_a = torch.empty_like(send_a)
    send_b = torch.empty(back_per_peer * world, dtype=torch.uint8, device="cuda")
    recv_b = torch.empty_like(send_b)

    def floor():
        dist.all_to_all_single(recv_a, send_a)
        dist.all_to_all_single(recv_b, send_b)

    floor_ms = _time(floor, iters)
    return dict(tokens=tokens, hidden=hidden, wire=plan.dispatch.dtype, layout=plan.dispatch.layout,
                dispatcher=plan.dispatcher, ms=ms, gbps=sent / ms / 1e6, floor_ms=floor_ms,
                floor_gbps=sent / floor_ms / 1e6, of_floor=floor_ms / ms, round_trip_err=err,
                bytes_sent=sent)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    host = Host()
    rows = [bench_case(host, rank, world, t, h, wire, a.iters)
            for t in (128, 4096) for h in (7168, 4096) for wire in ("bf16", "fp8")]
    if rank == 0:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"dispatch + combine, {world} x {torch.cuda.get_device_name()}, "
                            f"E={EXPERTS} top-{TOP_K}")
        for col in ("tokens/rank", "hidden", "wire", "layout", "dispatcher", "ms", "GB/s sent",
                    "NCCL a2a ms", "NCCL GB/s", "floor/ours", "round-trip err"):
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
