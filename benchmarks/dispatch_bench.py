"""Expert-parallel dispatch on one host, same shapes, same run (issue #15):

* ``dispatch``: dispatch + combine round trips with identity experts of every dispatcher the
  host has for the a2a mode (through the :class:`moe_core.ep.Dispatcher` Protocol only),
  DeepEP called directly through its own ``Buffer`` API, and the NCCL floor: two plain
  ``all_to_all_single`` calls moving the same bytes (each token once per peer rank that owns
  one of its experts, in the wire format; one bf16 row back);
* ``layer``: the whole EP layer (dispatch + runner + combine) for DeepSeek-V3-like dims
  (E=256, top-8, hidden 7168, intermediate 2048, fp8_block128) at decode and prefill, the
  runner alone on the same dispatched tokens, and the same layer on one GPU (all experts,
  both ranks' tokens).

    torchrun --nproc_per_node 2 benchmarks/dispatch_bench.py [--out results.json] [--only dispatch|layer]

Prints one table per part; ``--out`` writes every row as JSON (with ``ceilings`` from
``benchmarks/ceilings.py`` when that module is present).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import traceback

import torch
import torch.distributed as dist

from moe_core import A2A, Host, MoESpec, Wire
from moe_core.arch import detect_arch
from moe_core.plan import Backend

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


def _routing(tokens: int, hidden: int, rank: int, device: str):
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(tokens, hidden, generator=gen).bfloat16().to(device)
    ids = torch.rand(tokens, EXPERTS, generator=gen).topk(TOP_K, dim=1).indices.to(device)
    w = torch.full((tokens, TOP_K), 1.0 / TOP_K, device=device)
    return x, ids, w


def _wire_bytes(hidden: int, wire: Wire) -> int:
    return 2 * hidden if wire is Wire.BF16 else hidden + 4 * math.ceil(hidden / 128)


def floor_case(ids, hidden: int, wire: Wire, world: int, iters: int, device: str) -> dict:
    """The NCCL floor for this routing: the same bytes between the same peers."""
    local = EXPERTS // world
    hit = torch.zeros(ids.shape[0], world, dtype=torch.bool, device=device).scatter_(1, ids // local, True)
    sent = hit.sum(0)
    got = torch.empty_like(sent)
    dist.all_to_all_single(got, sent)
    sent, got = sent.tolist(), got.tolist()
    row = _wire_bytes(hidden, wire)
    out_a, in_a = [n * row for n in sent], [n * row for n in got]
    out_b, in_b = [n * hidden * 2 for n in got], [n * hidden * 2 for n in sent]
    bufs = [torch.empty(sum(n), dtype=torch.uint8, device=device) for n in (out_a, in_a, out_b, in_b)]

    def floor():
        dist.all_to_all_single(bufs[1], bufs[0], in_a, out_a)
        dist.all_to_all_single(bufs[3], bufs[2], in_b, out_b)

    return dict(ms=_time(floor, iters, device), bytes_sent=sum(out_a) + sum(out_b))


def protocol_case(host: Host, plan, x, ids, w, iters: int, device: str) -> dict:
    """Any dispatcher, through ``dispatch``/``combine`` only. Identity experts: the runner's
    output is the dispatched tokens (FP8 kept quantized: a bf16 buffer of their shape)."""
    dispatcher = host.make_dispatcher(plan)
    first = dispatcher.dispatch(x, ids, w)
    if first.x is None:
        from moe_core.runner import dequantize_wire

        ident = dequantize_wire(first.quantized[:2])
        y_of = lambda d: ident  # noqa: E731 - the same routing every call: the same shape
    else:
        y_of = lambda d: d.x  # noqa: E731
    out = dispatcher.combine(y_of(first), first)
    err = ((out.float() - x.float()).norm() / x.float().norm()).item()

    def round_trip():
        d = dispatcher.dispatch(x, ids, w)
        return dispatcher.combine(y_of(d), d)

    return dict(ms=_time(round_trip, iters, device), round_trip_err=err)


def deepep_direct_case(x, ids, w, spec: MoESpec, wire: Wire, low_latency: bool, iters: int,
                       device: str) -> dict:
    """DeepEP v1.2.1 called through its own ``Buffer`` API, sized as the plugin sizes it."""
    import deep_ep

    from moe_plugin_deepep.constraints import buffer_bytes
    from moe_plugin_deepep.sizing import qps_per_rank
    from moe_core.quant.fp8 import quantize_fp8_blockwise

    variant = "low_latency" if low_latency else "normal"
    cfg = dataclasses.replace(_cfg(spec, wire, low_latency))
    nvl, rdma = buffer_bytes(variant, spec, cfg)
    group = dist.group.WORLD
    ids = ids.long().contiguous()
    if low_latency:
        buf = _buffers.get(("ll", rdma)) or _buffers.setdefault(
            ("ll", rdma), deep_ep.Buffer(group, 0, rdma, low_latency_mode=True,
                                         num_qps_per_rank=qps_per_rank(spec.local_experts)))
        fp8 = wire is not Wire.BF16
        recv, _, handle, _, _ = buf.low_latency_dispatch(x, ids, spec.max_tokens, EXPERTS, use_fp8=fp8)
        y = torch.zeros(*(recv[0] if fp8 else recv).shape, dtype=torch.bfloat16, device=device)

        def round_trip():
            _, _, h, _, _ = buf.low_latency_dispatch(x, ids, spec.max_tokens, EXPERTS, use_fp8=fp8)
            buf.low_latency_combine(y, ids, w, h)
    else:
        buf = _buffers.get(("normal", nvl)) or _buffers.setdefault(("normal", nvl), deep_ep.Buffer(group, nvl, rdma))
        send = x
        if wire is not Wire.BF16:
            q, s = quantize_fp8_blockwise(x, 1, 128)
            send = (q, s.reshape(x.shape[0], -1))

        def dispatch():
            per_rank, per_rdma, per_expert, in_rank, _ = buf.get_dispatch_layout(ids, EXPERTS)
            return buf.dispatch(send, topk_idx=ids, topk_weights=w, num_tokens_per_rank=per_rank,
                                num_tokens_per_rdma_rank=per_rdma, is_token_in_rank=in_rank,
                                num_tokens_per_expert=per_expert)

        recv = dispatch()[0]
        y = torch.zeros((recv[0] if isinstance(recv, tuple) else recv).shape, dtype=torch.bfloat16,
                        device=device)

        def round_trip():
            handle = dispatch()[4]
            buf.combine(y, handle)

    return dict(ms=_time(round_trip, iters, device))


_buffers: dict = {}  # one DeepEP buffer per (mode, size): NVSHMEM is set up once per process


def _cfg(spec: MoESpec, wire: Wire, low_latency: bool):
    from moe_core.dispatch import DispatchConfig
    from moe_core.tokens import Layout, quantized_delivery

    layout = Layout.MASKED if low_latency else Layout.CONTIGUOUS
    # as for a runner that consumes quantized tokens (DeepGEMM): FP8 arrives kept quantized
    kept = quantized_delivery(layout, wire, quantized_input=True)
    return DispatchConfig(spec.a2a, layout, wire, spec.max_tokens, bool(kept))


def _safe(fn, *args, **kw) -> dict:
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - a row that fails is recorded, the run goes on
        return dict(failed=f"{type(e).__name__}: {e}"[:300], traceback=traceback.format_exc()[-1500:])


def dispatch_rows(host: Host, rank: int, world: int, iters: int, device: str, tokens_list,
                  hidden_list) -> list[dict]:
    rows = []
    arch = detect_arch() if device == "cuda" else "cpu"
    for tokens in tokens_list:
        decode = tokens <= 256
        for hidden in hidden_list:
            spec = MoESpec(num_experts=EXPERTS, top_k=TOP_K, hidden_size=hidden, intermediate_size=2048,
                           tp_size=world, ep_size=world, rank=rank, arch=arch, max_tokens=tokens,
                           a2a=A2A.DEEPEP_LL if decode else A2A.DEEPEP_NORMAL)
            x, ids, w = _routing(tokens, hidden, rank, device)
            local = host.resolve(spec, force="reference:loop")  # the runner does not run here
            names = [str(c.backend) for c in local.dispatchers if c.status.value in ("chosen", "supported")]
            for wire in (Wire.BF16, Wire.FP8):
                base = dict(tokens=tokens, hidden=hidden, wire=wire.value)
                start = len(rows)
                floor = _safe(floor_case, ids, hidden, wire, world, iters, device)
                rows.append(dict(base, path="nccl floor", **floor))
                if "deepep:" + ("low_latency" if decode else "normal") in names:
                    rows.append(dict(base, path="DeepEP Buffer (direct)",
                                     **_safe(deepep_direct_case, x, ids, w, spec, wire, decode, iters, device)))
                for name in names:
                    plugin, _, variant = name.partition(":")
                    plan = dataclasses.replace(local, dispatch=_cfg(spec, wire, decode),
                                               dispatcher=Backend(plugin, variant))
                    rows.append(dict(base, path=f"moe-core {name}",
                                     **_safe(protocol_case, host, plan, x, ids, w, iters, device)))
                for r in rows[start:]:
                    if "ms" in r and "bytes_sent" in floor:
                        r.update(gbps=floor["bytes_sent"] / r["ms"] / 1e6,
                                 of_floor=floor["ms"] / r["ms"] if "ms" in floor else None)
                if rank == 0:
                    for r in rows[start:]:
                        print(json.dumps({k: v for k, v in r.items() if k != "traceback"}), flush=True)
    return rows


# -- the whole layer ------------------------------------------------------------------------
def _device_weights(spec: MoESpec, device: str, seed: int = 0):
    """Random weights made on the device (DeepSeek-V3's experts are GBs: no CPU generator)."""
    from moe_core.weights import MoEWeights, expected_tensors

    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, (shape, dtype) in expected_tensors(spec).items():
        if dtype == "float8_e4m3fn":
            out[name] = (torch.randn(shape, generator=gen, device=device) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
        else:
            t = torch.rand(shape, generator=gen, device=device) * 1e-3 + 1e-4 if "scale" in name else \
                torch.randn(shape, generator=gen, device=device) / math.sqrt(shape[-1])
            out[name] = t.to(getattr(torch, dtype))
    return MoEWeights(**out)


def layer_rows(host: Host, rank: int, world: int, iters: int, device: str, tokens_list) -> list[dict]:
    from moe_core.synthetic import random_inputs

    rows = []
    arch = detect_arch() if device == "cuda" else "cpu"
    dims = dict(num_experts=EXPERTS, top_k=TOP_K, hidden_size=7168, intermediate_size=2048,
                quant="fp8_block128", arch=arch)
    for tokens in tokens_list:
        decode = tokens <= 256
        full = MoESpec(**dims, max_tokens=tokens * world)
        spec = full.replace(max_tokens=tokens, tp_size=world, ep_size=world, rank=rank,
                            a2a=A2A.DEEPEP_LL if decode else A2A.DEEPEP_NORMAL)
        base = dict(tokens=tokens, regime="decode" if decode else "prefill")
        x, tw, ti = random_inputs(full, tokens, seed=100 + rank, device=device)

        def ep_layer():
            plan = host.resolve(spec)
            layer = host.load_dispatched(plan, _device_weights(spec, device, seed=rank))
            d = layer.dispatcher.dispatch(x, ti, tw)
            runner = layer.layer.runner
            kept, layout = plan.dispatch.deliver_quantized, plan.dispatch.layout.value
            if kept:
                run = (lambda: runner.run_masked_quantized(d.quantized, d.counts)) if layout == "masked" else \
                    (lambda: runner.run_contiguous_quantized(d.quantized, _offsets(d.counts)))
            else:
                run = (lambda: runner.run_masked(d.x, d.counts)) if layout == "masked" else \
                    (lambda: runner.run_contiguous(d.x, _offsets(d.counts))) if layout == "contiguous" else \
                    (lambda: runner(d.x, d.topk_weights, d.topk_ids))
            y = run()

            def trip():
                e = layer.dispatcher.dispatch(x, ti, tw)
                layer.dispatcher.combine(y, e)

            return dict(runner=str(plan.backend), dispatcher=str(plan.dispatcher), layout=layout,
                        wire=plan.dispatch.wire.value, kept=kept, layer_ms=_time(lambda: layer(x, tw, ti), iters, device),
                        runner_ms=_time(run, iters, device), round_trip_ms=_time(trip, iters, device))

        r = dict(base, path="EP=2 layer", **_safe(ep_layer))
        if "layer_ms" in r:
            r["layer_over_parts"] = r["layer_ms"] / (r["runner_ms"] + r["round_trip_ms"])
        rows.append(r)
        torch.cuda.empty_cache() if device == "cuda" else None

        def one_gpu():  # the whole layer on rank 0's GPU: every expert, both ranks' tokens
            xs = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(xs, x)
            ws, ts = [torch.empty_like(tw) for _ in range(world)], [torch.empty_like(ti) for _ in range(world)]
            dist.all_gather(ws, tw)
            dist.all_gather(ts, ti)
            if rank:
                dist.barrier()
                return dict(skipped="rank 0 runs it")
            plan = host.resolve(full)
            layer = host.load(plan, _device_weights(full, device))
            xa, wa, ta = torch.cat(xs), torch.cat(ws), torch.cat(ts)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            for _ in range(3):
                layer(xa, wa, ta)
            sync()
            t = []
            for _ in range(iters):
                t0 = time.perf_counter()
                layer(xa, wa, ta)
                sync()
                t.append((time.perf_counter() - t0) * 1e3)
            dist.barrier()
            return dict(runner=str(plan.backend), layer_ms=sorted(t)[len(t) // 2])

        rows.append(dict(base, path="one GPU (all experts)", **_safe(one_gpu)))
        torch.cuda.empty_cache() if device == "cuda" else None
        if rank == 0:
            for r in rows[-2:]:
                print(json.dumps({k: v for k, v in r.items() if k != "traceback"}), flush=True)
    return rows


def _offsets(counts):
    from moe_core.runner import offsets_from_counts

    return offsets_from_counts(counts)


def _table(title: str, rows: list[dict], cols: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_fmt(r.get(c, r.get("failed", "") if c == cols[-1] else "")) for c in cols])
    Console(width=220).print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v >= 1e-2 else f"{v:.1e}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--backend", default="nccl", help="nccl (GPUs) or gloo (a CPU smoke run)")
    ap.add_argument("--tokens", default="128,4096")
    ap.add_argument("--hidden", default="7168,4096")
    ap.add_argument("--only", choices=("dispatch", "layer"))
    a = ap.parse_args()
    dist.init_process_group(a.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if str(a.backend) == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    host = Host()
    tokens = [int(t) for t in a.tokens.split(",")]
    result: dict = {"world": world, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    if a.only != "layer":
        result["dispatch"] = dispatch_rows(host, rank, world, a.iters, device, tokens,
                                           [int(h) for h in a.hidden.split(",")])
    if a.only != "dispatch":
        result["layer"] = layer_rows(host, rank, world, a.iters, device, tokens)
    if rank == 0:
        try:  # measured HBM / matmul ceilings, where benchmarks/ceilings.py provides them
            import ceilings  # noqa: PLC0415

            result["ceilings"] = ceilings.measure() if device == "cuda" else None
        except ImportError:
            result["ceilings"] = None
        if "dispatch" in result:
            _table(f"dispatch + combine, {world} x {result['device']}, E={EXPERTS} top-{TOP_K}",
                   result["dispatch"], ["tokens", "hidden", "wire", "path", "ms", "gbps", "of_floor",
                                        "round_trip_err", "failed"])
        if "layer" in result:
            _table(f"EP layer, DeepSeek-V3 dims (fp8), {world} x {result['device']}", result["layer"],
                   ["tokens", "regime", "path", "runner", "dispatcher", "wire", "kept", "layer_ms",
                    "runner_ms", "round_trip_ms", "layer_over_parts", "failed"])
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
