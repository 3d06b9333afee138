"""``moe run``: one layer with random weights through the resolved backend, checked."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import replace

import click

from .common import build_spec, check_backends, console, positive, require_device, spec_options, stage

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
    r = cfg.router
    if r.n_group and spec.num_experts % r.n_group:
        r = replace(r, n_group=None, topk_group=None)
    return r


def gib(n: float) -> str:
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


def planned_bytes(spec, tokens: int) -> int:
    """What a run holds at once: :func:`run_memory_bytes` plus the pristine copy of the
    canonical weights that the checks read."""
    from ..synthetic import run_memory_bytes, weight_bytes

    return run_memory_bytes(spec, tokens) + weight_bytes(spec)


def largest(lo: int, hi: int, fits) -> int | None:
    """The largest ``n`` in ``[lo, hi]`` with ``fits(n)`` (true up to some point), or None."""
    if hi < lo or not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def fitting_advice(spec, tokens: int, budget: float) -> str:
    """What to change so the run fits ``budget`` bytes: fewer experts when the weights are
    the problem, fewer tokens when the activations are. Counts stay multiples of the EP size
    and at least the top-k, so the advice is accepted when followed."""
    ep = spec.ep_size

    def sliced(k: int):
        return replace(spec, num_experts=k * ep)

    smallest = -(-spec.top_k // ep)  # in EP groups: at least top-k experts
    k = largest(smallest, spec.num_experts // ep - 1,
                 lambda k: planned_bytes(sliced(k), tokens) <= budget)
    if k is not None:
        return f"Run a slice: --experts {k * ep}"
    for s, also in ((spec, ""), (sliced(smallest), f" with --experts {smallest * ep}")):
        t = largest(1, tokens - 1, lambda t: planned_bytes(s, t) <= budget)
        if t is not None:
            return f"Lower --tokens to at most {t}{also}"
    return "Even one token and the smallest slice do not fit: use a machine with more memory"


def check_memory(name: str, spec, tokens: int, dev: str) -> tuple[int, int]:
    """``(planned, available)`` bytes; a usage error with advice when the run would not fit."""
    need, have = planned_bytes(spec, tokens), available_bytes(dev)
    if need > MEMORY_SHARE * have:
        raise click.UsageError(
            f"{name} ({spec.describe()}) needs about {gib(need)} on {dev}; {gib(have)} is "
            f"available (a run may plan {MEMORY_SHARE:.0%} of it). "
            f"{fitting_advice(spec, tokens, MEMORY_SHARE * have)}")
    return need, have


def output_problems(out, exact, weights, pristine) -> list[str]:
    """What is wrong with a run whatever its error says: non-finite output, all zeros where
    ``exact`` (the first rows' float64 result) is not, or weights the backend changed in
    place (an error computed from them would look small)."""
    import torch

    problems = []
    if not bool(torch.isfinite(out).all()):
        problems.append("the output holds NaN or Inf")
    elif not bool(out[:exact.shape[0]].any()) and bool(exact.any()):
        problems.append("the output is all zeros (the float64 computation is not)")
    changed = [n for n, t in pristine.tensors().items() if not torch.equal(getattr(weights, n), t)]
    if changed:
        problems.append(f"the backend changed the caller's weights in place ({', '.join(changed)})")
    return problems


def _run(o: dict) -> dict:
    import torch

    from .. import default_host
    from ..models import load_model_config
    from ..quant import tolerance
    from ..reference.oracle import float64_layer, relative_error
    from ..synthetic import random_inputs, random_weights

    quiet = o["as_json"]
    cfg = load_model_config(o["model"])
    spec = build_spec({**o, "model": cfg}, default_tokens=64)
    tokens = spec.max_tokens
    dev = require_device(spec)
    need, have = check_memory(cfg.name, spec, tokens, dev)
    host = default_host()
    plan = host.resolve(spec, force=o["force"], disable=o["disable"])
    if o["cuda_graph"]:  # before minutes of weights, not after
        from ..graphs import require_capturable

        require_capturable(plan, dev)
    with stage(f"random weights for {spec.local_experts} experts ({spec.quant.value}), and a "
               "pristine copy for the checks", quiet):
        weights = random_weights(spec, seed=o["seed"])
        # Cloned before load: a backend that changes its input in place cannot hide it.
        pristine = weights.replace(**{n: t.clone() for n, t in weights.tensors().items()})
    with stage(f"load through {plan.backend}", quiet):
        t0 = time.perf_counter()
        layer = host.load(plan, weights)
        load_s = time.perf_counter() - t0
    x, tw, ti = random_inputs(spec, tokens, router=router_for(cfg, spec))
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if o["cuda_graph"]:
        with stage(f"capture a CUDA graph for {tokens} tokens", quiet):
            layer = layer.graphed([tokens])
    with stage(f"run {tokens} tokens: warm-up and {o['iters']} timed", quiet):
        out = layer(x, tw, ti)  # warm-up (JIT compiles happen here)
        ms = _median_ms(lambda: layer(x, tw, ti), o["iters"], sync)
    result = {"model": cfg.name, "spec": spec.to_dict(), "backend": str(plan.backend), "reason": plan.reason,
              "tokens": tokens, "load_s": load_s, "median_ms": ms, "cuda_graph": o["cuda_graph"],
              "memory_planned_bytes": need, "memory_available_bytes": have, "notes": list(cfg.notes)}
    if plan.plugin != "reference":
        with stage("the reference backend on the same inputs", quiet):
            ref = host.load(host.resolve(spec, force="reference"), pristine)(x, tw, ti)
        result["error_vs_reference"] = relative_error(out, ref)
    n = min(tokens, ORACLE_TOKENS)
    with stage(f"float64 check on {n} tokens", quiet):
        exact = float64_layer(spec, pristine, x[:n], tw[:n], ti[:n], quantize_activations=False)
    result["error_vs_float64"] = relative_error(out[:n], exact)
    result["tolerance"] = tol = tolerance(spec.quant)
    result["problems"] = output_problems(out, exact, weights, pristine)
    result["ok"] = (not result["problems"] and result["error_vs_float64"] <= tol
                    and result.get("error_vs_reference", 0) <= tol)
    return result


@click.command()
@spec_options
@click.option("--iters", default=3, show_default=True, type=positive,
              help="Timed runs (median reported).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1),
              help="Of the random weights (torch takes seeds in [0, 2**64)).")
@click.option("--cuda-graph", is_flag=True,
              help="Capture the loaded layer in a CUDA graph and time its replays (the backend "
                   "must declare graph_safe; moe explain shows it).")
@click.option("--json", "as_json", is_flag=True)
def run(iters, seed, cuda_graph, as_json, **o):
    """Run one layer of a model on random weights through the resolved backend.

    Weights are random in the canonical layout and quantized as the spec says. The output
    is compared with the reference backend (when another backend ran) and with a float64
    computation on the first 32 tokens, both from a copy of the weights taken before the
    load, against the format's tolerance. Exits 1 when an error exceeds it or the output is
    non-finite or all zeros, 2 on bad input.
    """
    check_backends(o["force"], o["disable"])
    r = _run({**o, "iters": iters, "seed": seed, "as_json": as_json, "cuda_graph": cuda_graph})
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
        console.print(f"memory    planned {gib(r['memory_planned_bytes'])} of "
                      f"{gib(r['memory_available_bytes'])} available", highlight=False)
        console.print(f"load      {r['load_s'] * 1e3:.1f} ms (process weights + build runner)")
        console.print(f"run       {r['median_ms']:.2f} ms median of {iters} for {r['tokens']} tokens"
                      f"{' (CUDA graph replays)' if r['cuda_graph'] else ''} "
                      f"({r['tokens'] / r['median_ms'] * 1e3:.0f} tokens/s)")
        if "error_vs_reference" in r:
            console.print(f"error     {r['error_vs_reference']:.2e} relative vs the reference backend")
        console.print(f"error     {r['error_vs_float64']:.2e} relative vs float64 on "
                      f"{min(r['tokens'], ORACLE_TOKENS)} tokens (tolerance {r['tolerance']:.2g} "
                      f"for {s['quant']})")
        for problem in r["problems"]:
            console.print(f"[bold red]FAILED:[/] {problem}", highlight=False)
        if not r["ok"] and not r["problems"]:
            console.print("[bold red]FAILED: error above tolerance[/]")
        elif r["ok"]:
            console.print("[bold green]OK[/]")
    if not r["ok"]:
        sys.exit(1)
