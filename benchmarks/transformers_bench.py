"""Forward time of one MoE model under transformers' own experts implementations and under
``experts_implementation="moe_core"``, decode and prefill sizes, on one GPU or on two with
expert parallelism (transformers' token exchange against moe-core's):

    python benchmarks/transformers_bench.py --out bench.json --plot bench.png
    torchrun --nproc_per_node 2 benchmarks/transformers_bench.py --ep 2 --out ep2.json

The model is a transformers MoE family at a real model's expert dims with few layers and
random bf16 weights (attention shrunk to 4 heads of 32, vocabulary 512, so the experts
dominate; the router, norms and attention are the same code under every implementation).
Decode is B sequences of one token (``use_cache=False``: B tokens per forward), prefill one
sequence of T tokens. On one GPU each forward is timed as replays of a CUDA graph of it
(``common.time_call``), as an engine runs decode: an eager forward of a few small layers is
bound by Python and kernel launches (measured on an H200, 2026-12-01: grouped_mm and moe_core
7-10 ms per Qwen3 forward at 1 to 2,048 tokens), which hides the experts. Where a forward
cannot be captured (host synchronisation, as in eager's per-expert loop) it is timed
eagerly and its row says why. Under EP every forward is eager, a fixed number of calls on
every rank (the token exchanges must pair up). Each implementation's logits (of the timed
calls) are compared with grouped_mm's on the same input (relative error). An implementation
that cannot run a size (not installed, too much memory) gets a row saying why instead of a
time. Prints a table, writes JSON and,
with matplotlib installed, a plot of ms per forward against tokens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

#: name -> the family and the expert dims of a real model (fewer layers, and fewer experts
#: where a real layer would not fit a few times over in one GPU's memory).
PRESETS = {
    "tiny": dict(family="qwen3_moe", layers=2, experts=8, top_k=2, hidden=128, intermediate=64),
    "qwen3-30b-a3b": dict(family="qwen3_moe", layers=4, experts=128, top_k=8, hidden=2048,
                          intermediate=768),
    "deepseek-v3-64e": dict(family="deepseek_v3", layers=2, experts=64, top_k=8, hidden=7168,
                            intermediate=2048),
    "mixtral-8x7b": dict(family="mixtral", layers=2, experts=8, top_k=2, hidden=4096,
                         intermediate=14336),
    "gpt-oss-20b": dict(family="gpt_oss", layers=2, experts=32, top_k=4, hidden=2880,
                        intermediate=2880),
}
IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm", "deepgemm", "moe_core")
#: at EP=2: (ep_implementation, experts_implementation); "all_reduce" is what transformers'
#: "auto" picks at inference when the EP group shares the batch.
EP_COMBOS = (("all_reduce", "grouped_mm"), ("all_to_all", "grouped_mm"), ("all_to_all", "deepgemm"),
             ("all_reduce", "moe_core"), ("all_to_all", "moe_core"), ("moe_core", "moe_core"))
DECODE = (1, 8, 32, 128)
PREFILL = (512, 2048, 8192)
#: batched_mm gathers every selected expert's weights per (token, expert) pair
BATCHED_MM_LIMIT_GB = 16.0


def _quiet():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def build(preset: dict, device: str):
    """The model with random weights, made on the device."""
    from transformers import AutoModelForCausalLM

    from moe_core.integrations.transformers import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(preset["family"], layers=preset["layers"], experts=preset["experts"],
                      top_k=preset["top_k"], hidden=preset["hidden"],
                      intermediate=preset["intermediate"])
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()


#: Seconds of timed samples per row (one GPU).
BUDGET_S = 0.5
#: Implementations timed eagerly on one GPU without trying a capture: a failed capture of a
#: forward that reads the host can leave the CUDA context faulting for every later row (seen
#: in layer_bench on the H200), and these read it on purpose.
NO_CAPTURE = {"eager": "transformers' eager experts loop over the experts hit, found on the host"}


def timed_fixed(fn, device: str, iters: int) -> tuple[float, float]:
    """``(ms per call, first call s)`` over exactly ``iters`` eager calls: under EP every rank
    must make the same calls (a count from each rank's own timing could differ and hang)."""
    if device.startswith("cuda"):
        return common.timed(fn, iters)
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters, first


def inputs(kind: str, n: int, vocab: int, device: str) -> torch.Tensor:
    shape = (n, 1) if kind == "decode" else (1, n)
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(n)).to(device)


def why_not(impl: str, tokens: int, preset: dict) -> str | None:
    """Why ``impl`` is not run at ``tokens`` tokens (None: run it)."""
    if impl == "batched_mm":
        pairs = tokens * preset["top_k"]
        gb = pairs * 3 * preset["hidden"] * preset["intermediate"] * 2 / 1e9
        if gb > BATCHED_MM_LIMIT_GB:
            return f"would gather {gb:.0f} GB of expert weights ({pairs} token-expert pairs)"
    return None


def tune_model(model, sizes, tiers: tuple[int, ...] = ()) -> str:
    """What a user runs once per machine: ``moe tune`` on ``model``'s layer specs (one per
    distinct layer, at the benchmark's token counts, the decode plan's size and the tier
    boundaries, into a throwaway cache); the model's moe_core layers then resolve with a host
    reading it, a plan per tier (``configure(tiers=...)``)."""
    import moe_core.integrations.transformers as moe_tf
    from moe_core.integrations.hf_experts import Options
    from moe_core.tuning import spec_key

    specs = {spec_key(res.plan.spec): res.plan.spec for layer in moe_tf.report(model).layers
             for res in layer.resolutions.values() if res.plan is not None}
    buckets = sorted({n for _, n in sizes} | {Options().decode_tokens} | set(tiers))
    host, chosen, seconds = common.tuned_host([(list(specs.values()), buckets)])
    moe_tf.configure(model, host=host, tiers=tiers)
    return (f"moe tune: {len(specs)} layer spec(s), buckets {buckets}, {seconds:.1f} s; "
            f"chosen {', '.join(chosen)}")


def new_row(impl: str, ep_impl: str | None, kind: str, tokens: int, note: str | None, plans) -> dict:
    """One result row, not timed yet (``note``: why it will not be)."""
    return dict(impl=impl, ep_impl=ep_impl, kind=kind, tokens=tokens, ms=None, first_s=None,
                graphed=None, capture_error=None, rel_err=None, note=note, plans=plans)


def set_implementation(model, impl: str) -> str | None:
    """Switch ``model`` to ``impl``; the reason when it cannot run here."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if impl != "eager" and impl not in ALL_EXPERTS_FUNCTIONS:
        return f"not in this transformers' ExpertsInterface ({', '.join(ALL_EXPERTS_FUNCTIONS)})"
    try:
        model.set_experts_implementation(impl)
    except Exception as e:  # noqa: BLE001 - recorded in the table as the reason
        return f"{type(e).__name__}: {e}"
    return None


def measure(model, impls, preset, device, ep: int, sizes, ep_impl: str | None = None,
            want: dict | None = None, graph: bool = True) -> list[dict]:
    """One row per (implementation, size). ``want``: grouped_mm's logits per size, filled
    here when grouped_mm runs in this load (inputs are seeded, so loads compare). ``graph``:
    one GPU times CUDA-graph replays (else eager calls)."""
    import moe_core.integrations.transformers as moe_tf
    from moe_core.reference.oracle import relative_error

    vocab = model.config.vocab_size
    ids = {s: inputs(*s, vocab, device) for s in sizes}

    def forward(s):
        with torch.no_grad():
            return model(ids[s], use_cache=False).logits

    want = {} if want is None else want
    if not want and "grouped_mm" in impls and set_implementation(model, "grouped_mm") is None:
        want.update({s: forward(s).float() for s in sizes})
    rows = []
    for impl in impls:
        skip = set_implementation(model, impl)
        plans = None
        if skip is None and impl == "moe_core":
            rep = moe_tf.report(model, load=True)  # weights processed outside the timing
            plans = {g: sorted({str(r.resolutions[g].plan.backend) for r in rep.layers})
                     for g in rep.layers[0].resolutions}  # decode, prefill, or a plan per tier
            plans["dispatcher"] = sorted({str(r.dispatcher(g)) for r in rep.layers for g in r.resolutions})
            sel = [r.resolutions[g].plan.selection for r in rep.layers for g in r.resolutions]
            plans["selected_by"] = sorted({str(x.by) for x in sel})
            plans["from_measurements"] = all(x.times for x in sel)  # the host read tuning times
        for s in sizes:
            row = new_row(impl, ep_impl, s[0], s[1], skip or why_not(impl, s[1], preset), plans)
            if row["note"] is None:
                try:
                    if ep > 1:
                        torch.distributed.barrier()
                    if ep > 1 or not device.startswith("cuda"):
                        ms, first = timed_fixed(lambda s=s: forward(s), device,
                                                iters=10 if s[0] == "decode" else 5)
                        row.update(ms=ms, first_s=first, graphed=False)
                        logits = forward(s)
                    else:
                        t = common.time_call(lambda s=s: forward(s),
                                             graph=graph and impl not in NO_CAPTURE, budget_s=BUDGET_S)
                        row.update(ms=t.ms, first_s=t.first_s, graphed=t.graphed,
                                   capture_error=t.capture_error or NO_CAPTURE.get(impl))
                        logits = t.output
                    if s in want:
                        row["rel_err"] = relative_error(logits.float(), want[s])
                except Exception as e:  # noqa: BLE001 - recorded in the table as the reason
                    row["note"] = f"{type(e).__name__}: {str(e)[:200]}"
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
            rows.append(row)
    return rows


def load_sharded(path: str, ep: int, ep_impl: str, experts_impl: str):
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, experts_implementation=experts_impl,
        distributed_config=DistributedConfig(tp_size=ep, ep_size=ep, ep_implementation=ep_impl)).eval()


def run_ep(preset: dict, name: str, ep: int, device: str, root: str, sizes) -> list[dict]:
    """Every EP combo; one load per ep_implementation (the experts implementation switches)."""
    import torch.distributed as dist

    path = os.path.join(root, name)
    if dist.get_rank() == 0 and not os.path.exists(os.path.join(path, "config.json")):
        build(preset, device).save_pretrained(path)
    dist.barrier()
    rows, want = [], {}
    for ep_impl in dict.fromkeys(e for e, _ in EP_COMBOS):
        impls = [i for e, i in EP_COMBOS if e == ep_impl]
        try:
            model = load_sharded(path, ep, ep_impl, impls[0])
        except Exception as e:  # noqa: BLE001 - recorded in the table as the reason
            rows += [new_row(i, ep_impl, "-", 0, f"load: {type(e).__name__}: {e}", None) for i in impls]
            continue
        rows += measure(model, impls, preset, device, ep, sizes, ep_impl, want)
        del model
    return rows


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("ep impl", "experts impl", "kind", "tokens", "ms / forward", "graph", "first call s",
                "rel. err vs grouped_mm", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        eager = r.get("capture_error") and f"eager: {r['capture_error'][:120]}"
        table.add_row(r["ep_impl"] or "-", r["impl"], r["kind"], str(r["tokens"]),
                      "" if r["ms"] is None else f"{r['ms']:.3f}",
                      "" if r.get("graphed") is None else ("yes" if r["graphed"] else "no"),
                      "" if r["first_s"] is None else f"{r['first_s']:.2f}",
                      "" if r["rel_err"] is None else f"{r['rel_err']:.1e}",
                      "; ".join(x for x in (r["note"], eager) if x))
    Console(width=200).print(table)


def plot(rows: list[dict], path: str, title: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("decode", "prefill")):
        series = {}
        for r in rows:
            if r["kind"] == kind and r["ms"] is not None:
                series.setdefault(f"{r['ep_impl']}/{r['impl']}" if r["ep_impl"] else r["impl"], []).append(
                    (r["tokens"], r["ms"]))
        for label, pts in sorted(series.items()):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=label, linewidth=2.5 if "moe_core" in label else 1.2)
        ax.set(xscale="log", yscale="log", xlabel="tokens per forward", ylabel="ms per forward",
               title=f"{kind}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return f"plot: {path}"


def report_results(results: list[dict], plot_path: str | None) -> None:
    for res in results:
        print_table(res["rows"], res["title"])
        for ep_impl, plans in {r["ep_impl"]: r["plans"] for r in res["rows"] if r["plans"]}.items():
            print(f"moe_core plans ({ep_impl or 'one GPU'}): {plans}")
        if plot_path:
            path = plot_path if len(results) == 1 else plot_path.replace(".png", f"-{res['preset']}.png")
            print(plot(res["rows"], path, res["title"]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen3-30b-a3b", help=f"one of {', '.join(PRESETS)}, or several, comma-separated")
    ap.add_argument("--ep", type=int, default=1, help="expert-parallel size (run under torchrun)")
    ap.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    ap.add_argument("--out", default=None, help="JSON of every row")
    ap.add_argument("--plot", default=None, help="PNG of ms per forward against tokens")
    ap.add_argument("--root", default="/tmp/moe_tf_bench", help="where EP runs save the model")
    ap.add_argument("--decode", default=",".join(map(str, DECODE)), help="sequences of one token")
    ap.add_argument("--prefill", default=",".join(map(str, PREFILL)), help="tokens of one sequence")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (gloo for EP)")
    ap.add_argument("--from-json", default=None,
                    help="print and plot the results of an earlier run (no GPU needed): the GPU "
                         "machine may have no matplotlib")
    ap.add_argument("--no-graph", dest="graph", action="store_false",
                    help="one GPU: time every forward eagerly instead of as CUDA-graph replays")
    ap.add_argument("--tiers", default="", help="one GPU: moe_core plans per token range, e.g. 64 "
                    "(configure(tiers=...)); default: one decode and one prefill plan")
    ap.add_argument("--no-tune", dest="tune", action="store_false",
                    help="one GPU: skip `moe tune` on the model's layers before the moe_core rows "
                         "(they then show the static priority order, not a tuned machine's choice)")
    a = ap.parse_args(argv)
    a.tiers = common.parse_tiers(ap, a.tiers)
    if a.from_json:
        results = json.loads(Path(a.from_json).read_text())["results"]
        report_results(results, a.plot)
        return
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (run scripts/gpu_session.sh on the device machine), "
                 "or --device cpu for a smoke run")
    sizes = [("decode", int(n)) for n in a.decode.split(",") if n] + [
        ("prefill", int(n)) for n in a.prefill.split(",") if n]
    _quiet()
    import transformers

    import moe_core.integrations.transformers  # noqa: F401 - registers "moe_core"

    rank = 0
    if a.ep > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if a.device == "cuda" else "gloo")
        rank = dist.get_rank()
        if a.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    device = f"cuda:{torch.cuda.current_device()}" if a.device == "cuda" else "cpu"
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               device=torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or "cpu",
               torch=torch.__version__,
               transformers=transformers.__version__, python=platform.python_version(), ep=a.ep,
               command=" ".join(sys.argv))
    results = []
    for name in a.preset.split(","):
        preset = PRESETS[name]
        if a.ep > 1:
            rows = run_ep(preset, name, a.ep, device, a.root, sizes)
        else:
            model = build(preset, device)
            if a.tune and "moe_core" in a.impls.split(","):
                print(tune_model(model, sizes, a.tiers), flush=True)
            elif a.tiers:
                import moe_core.integrations.transformers as moe_tf
                moe_tf.configure(model, tiers=a.tiers)
            rows = measure(model, a.impls.split(","), preset, device, 1, sizes, graph=a.graph)
            del model
        title = (f"{name} ({preset['family']}, {preset['layers']} layers, E={preset['experts']} "
                 f"top{preset['top_k']} H={preset['hidden']} I={preset['intermediate']}) on "
                 f"{env['device']}, EP={a.ep}")
        results.append(dict(preset=name, **preset, title=title, rows=rows))
    if rank == 0:
        if a.out:
            Path(a.out).write_text(json.dumps(dict(env=env, results=results), indent=1))
        report_results(results, a.plot)
    if a.ep > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
