"""``moe run``: one layer with random weights through the resolved backend, checked."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import click

from ..errors import MoEError
from .common import build_spec, console, err_console, spec_options

#: Tokens checked against the float64 computation (it is slow by design).
ORACLE_TOKENS = 32
#: Share of the available memory a run may plan to use.
MEMORY_SHARE = 0.8


def available_bytes(device_type: str) -> int:
    """Free memory where the run's tensors live (CUDA device 0, or host RAM)."""
    if device_type == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def router_for(cfg, spec):
    """The model's router, with expert groups dropped when a slice breaks them."""
    from dataclasses import replace

    r = cfg.router
    if r.n_group and spec.num_experts % r.n_group:
        r = replace(r, n_group=None, topk_group=None)
    return r


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _median_ms(fn, iters: int, sync) -> float:
    times = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _run(o: dict) -> dict:
    import torch

    from .. import default_host
    from ..models import load_model_config
    from ..quant import tolerance
    from ..reference.oracle import float64_layer, relative_error
    from ..synthetic import random_inputs, random_weights, run_memory_bytes, weight_bytes
    from ..weights import device_type

    cfg = load_model_config(o["model"])
    spec = build_spec({**o, "model": cfg}, default_tokens=64)
    tokens = spec.max_tokens
    dev = device_type(spec)
    if dev == "cuda" and not torch.cuda.is_available():
        raise click.UsageError(f"arch {spec.arch} needs a CUDA device and none is present "
                               "(use --arch cpu or --arch auto)")
    need, have = run_memory_bytes(spec, tokens), available_bytes(dev)
    if need > MEMORY_SHARE * have:
        per_expert = max(1, weight_bytes(spec) // spec.local_experts)
        fit = max(spec.ep_size, int(MEMORY_SHARE * have / (2.2 * per_expert)) // spec.ep_size * spec.ep_size)
        raise click.UsageError(
            f"{cfg.name} ({spec.describe()}) needs about {_gib(need)} on {dev}; {_gib(have)} is "
            f"available (a run may plan {MEMORY_SHARE:.0%} of it). Run a slice: --experts {fit}")
    host = default_host()
    plan = host.resolve(spec, force=o["force"], disable=o["disable"])
    weights = random_weights(spec, seed=o["seed"])
    t0 = time.perf_counter()
    layer = host.load(plan, weights)
    load_s = time.perf_counter() - t0
    x, tw, ti = random_inputs(spec, tokens, router=router_for(cfg, spec))
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    out = layer(x, tw, ti)  # warm-up (JIT compiles happen here)
    ms = _median_ms(lambda: layer(x, tw, ti), o["iters"], sync)
    result = {"model": cfg.name, "spec": spec.to_dict(), "backend": str(plan.backend), "reason": plan.reason,
              "tokens": tokens, "load_s": load_s, "median_ms": ms,
              "memory_planned_bytes": need, "memory_available_bytes": have, "notes": list(cfg.notes)}
    if plan.plugin != "reference":
        ref = host.load(host.resolve(spec, force="reference"), weights)(x, tw, ti)
        result["error_vs_reference"] = relative_error(out, ref)
    n = min(tokens, ORACLE_TOKENS)
    exact = float64_layer(spec, weights, x[:n], tw[:n], ti[:n], quantize_activations=False)
    result["error_vs_float64"] = relative_error(out[:n], exact)
    result["tolerance"] = tol = tolerance(spec.quant)
    result["ok"] = result["error_vs_float64"] <= tol and result.get("error_vs_reference", 0) <= tol
    return result


@click.command()
@spec_options
@click.option("--iters", default=3, show_default=True, help="Timed runs (median reported).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def run(iters, seed, as_json, **o):
    """Run one layer of a model on random weights through the resolved backend.

    Weights are random in the canonical layout and quantized as the spec says. The output
    is compared with the reference backend (when another backend ran) and with a float64
    computation on the first 32 tokens, against the format's tolerance. Exits 1 when an
    error exceeds it, 2 on bad input.
    """
    o.update(iters=iters, seed=seed)
    try:
        r = _run(o)
    except MoEError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        s = r["spec"]
        console.print(f"[bold]{r['model']}[/]: {s['local_experts']} local experts of {s['num_experts']}, "
                      f"top-{s['top_k']}, H={s['hidden_size']}, I/rank={s['intermediate_per_partition']}, "
                      f"{s['quant']}, {s['arch']}", highlight=False)
        for note in r["notes"]:
            console.print(f"  note: {note}", highlight=False)
        console.print(f"backend   {r['backend']} ({r['reason']})", highlight=False)
        console.print(f"memory    planned {_gib(r['memory_planned_bytes'])} of "
                      f"{_gib(r['memory_available_bytes'])} available", highlight=False)
        console.print(f"load      {r['load_s'] * 1e3:.1f} ms (process weights + build runner)")
        console.print(f"run       {r['median_ms']:.2f} ms median of {iters} for {r['tokens']} tokens "
                      f"({r['tokens'] / r['median_ms'] * 1e3:.0f} tokens/s)")
        if "error_vs_reference" in r:
            console.print(f"error     {r['error_vs_reference']:.2e} relative vs the reference backend")
        console.print(f"error     {r['error_vs_float64']:.2e} relative vs float64 on "
                      f"{min(r['tokens'], ORACLE_TOKENS)} tokens (tolerance {r['tolerance']:.2g} "
                      f"for {s['quant']})")
        console.print("[bold green]OK[/]" if r["ok"] else "[bold red]FAILED: error above tolerance[/]")
    if not r["ok"]:
        sys.exit(1)
