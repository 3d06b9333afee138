"""Measured resolution on one H200 (issue #14): does resolution pick the fastest runner after
`moe tune`, and how long does tuning a model take?

1. **Speed**: every distinct MoE layer spec of each model deployment (the catalogue's models
   have one routed-expert shape, so one spec per deployment) tuned over 8 buckets (1 to 16K
   tokens, x4) into a fresh cache. Goal: <= 120 s per model, compiles (load + first calls)
   excluded and reported.
2. **Choice**: the grid (issue #13's shapes, bf16 and fp8, the standard layout and a
   dispatcher's contiguous (deepep_normal) and masked (deepep_ll) layouts, tokens 1 to 16K)
   is tuned once (cache A), then every runner is timed again independently (cache B). At
   each point (shape, quant, a2a, tokens T) the runner resolution picks from A for
   `max_tokens=T` is compared with the fastest in B. Goal: within 5% at >= 95% of the
   points; the worst miss is reported, and the static-priority choice for comparison.

Prints tables and writes ``tune_bench.json`` (and ``tune_grid.png`` where matplotlib is
installed) to ``--out``. On the H200, with the FlashInfer CUTLASS kinds and DeepGEMM built
first (``.carry/`` from scripts/build_carry.sh, fetch_flashinfer.sh, fetch_deepgemm.sh):

    BENCH="benchmarks/tune_bench.py --shapes deepseek-v3-ep8,qwen3-30b-a3b" \
        bash scripts/gpu_session.sh start 540       # then: bash scripts/gpu_session.sh poll 560

A CPU smoke run (small slices, the reference backend only):

    python benchmarks/tune_bench.py --arch cpu --experts 8 --tokens 1,4 --shapes qwen3-30b-a3b \\
        --quants bf16 --speed-buckets 1,4 --out /tmp/tune-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moe_core import Host, SpecError, spec_for_model
from moe_core.tuning import TuningCache, TuningError, parse_buckets, plot, tune

#: name -> (bundled model, tp, ep). A dispatcher's layouts need ep > 1: those rows use tp=ep=8.
SHAPES = {
    "deepseek-v3-ep8": ("deepseek-ai/DeepSeek-V3", 8, 8),
    "qwen3-30b-a3b": ("Qwen/Qwen3-30B-A3B", 1, 1),
    "gpt-oss-20b": ("openai/gpt-oss-20b", 1, 1),
    "nemotron-3-nano-tp8": ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 8, 1),
}
QUANTS = ("bf16", "fp8_block128")
#: a2a mode -> the layout it hands runners (torch:all_to_all stands in for DeepEP).
A2AS = {"none": "standard", "deepep_normal": "contiguous/standard", "deepep_ll": "masked"}
TOKENS = "1,4,16,64,256,1024,4096,16384"
WITHIN = 0.05
GOAL_SHARE = 0.95
GOAL_SPEED_S = 120.0


def grid_specs(args) -> list:
    specs = []
    for name in args.shapes.split(","):
        model, tp, ep = SHAPES[name]
        for quant in args.quants.split(","):
            for a2a in args.a2a.split(","):
                t, e = (tp, ep) if a2a == "none" or ep > 1 else (8, 8)
                try:
                    specs.append(spec_for_model(model, tp=t, ep=e, quant=quant, a2a=a2a, arch=args.arch,
                                                experts=args.experts, max_tokens=max(args.tokens)))
                except SpecError as err:
                    print(f"skipped {name} {quant} {a2a}: {err}", file=sys.stderr)
    return specs


def speed(args, host, out: Path, console: Console) -> list[dict]:
    rows = []
    table = Table(title=f"tuning time per model, {len(args.speed_buckets)} buckets "
                        f"({','.join(map(str, args.speed_buckets))}), goal <= {GOAL_SPEED_S:.0f} s "
                        "excluding compiles")
    for col in ("model (deployment)", "distinct specs", "runners timed", "tuning s", "compiles s",
                "weights s", "goal"):
        table.add_column(col, justify="right")
    for name in args.shapes.split(","):
        model, tp, ep = SHAPES[name]
        specs = [spec_for_model(model, tp=tp, ep=ep, arch=args.arch, experts=args.experts,
                                max_tokens=max(args.speed_buckets))]  # the model's own format
        rep = tune(specs, host=host, buckets=args.speed_buckets, cache=TuningCache(out / f"speed-{name}"),
                   graphs=args.graphs, iters=args.iters, progress=True)
        timed = sum(len(ms) for lay in rep.layers for ms in lay.buckets.values())
        ok = rep.tuning_s <= GOAL_SPEED_S
        rows.append({"model": model, "tp": tp, "ep": ep, "specs": len(specs), "runners_timed": timed,
                     "tuning_s": rep.tuning_s, "compile_s": rep.compile_s, "weights_s": rep.weights_s,
                     "wall_s": rep.wall_s, "met": ok})
        table.add_row(f"{model} (tp{tp} ep{ep})", str(len(specs)), str(timed), f"{rep.tuning_s:.1f}",
                      f"{rep.compile_s:.1f}", f"{rep.weights_s:.1f}", "met" if ok else "NOT met")
    console.print(table)
    return rows


def choice(args, host, out: Path, console: Console) -> dict:
    specs = grid_specs(args)
    common = dict(host=host, buckets=args.tokens, graphs=args.graphs, iters=args.iters, progress=True)
    tuned = tune(specs, cache=TuningCache(out / "grid-tune"), **common)
    verify = tune(specs, cache=TuningCache(out / "grid-verify"), **common)
    measured = Host(host.registry, host.env, measurements=TuningCache(out / "grid-tune"))
    static = Host(host.registry, host.env, measurements=False)
    points = []
    for lay in verify.layers:
        for tokens, ms in sorted(lay.buckets.items()):
            times = {m.backend: m.ms for m in ms if m.ms is not None}
            if not times:
                continue
            spec = lay.spec.for_tokens(tokens)
            fastest = min(times, key=times.get)
            point = {"spec": lay.spec.describe(), "a2a": lay.spec.a2a.value, "quant": lay.spec.quant.value,
                     "tokens": tokens, "runners": len(times), "fastest": fastest,
                     "fastest_ms": times[fastest], "times": times}
            for label, h in (("chosen", measured), ("static", static)):
                plan = h.resolve(spec)
                backend = str(plan.backend)
                t = times.get(backend, math.inf)
                point[label] = backend
                point[f"{label}_miss"] = t / times[fastest] - 1 if math.isfinite(t) else None
                if label == "chosen":
                    point["selected_by"] = plan.selection.by.value if plan.selection else None
            points.append(point)
    summary = _summary(points)
    table = Table(title=f"choice after moe tune: {len(points)} grid points "
                        f"({sum(p['runners'] > 1 for p in points)} with more than one runner)")
    for col in ("", "within 5% of the fastest", "worst miss", "at"):
        table.add_column(col, justify="right")
    for label in ("chosen", "static"):
        s = summary[label]
        table.add_row("after moe tune" if label == "chosen" else "static priority",
                      f"{s['within']}/{len(points)} ({s['share']:.1%})",
                      f"{s['worst_miss']:.1%}" if s["worst_miss"] is not None else "failed",
                      s["worst_at"])
    console.print(table)
    detail = Table(title="points where the choice missed the fastest by more than 5%")
    for col in ("spec", "tokens", "chosen", "fastest", "miss"):
        detail.add_column(col, overflow="fold")
    for p in points:
        if p["chosen_miss"] is None or p["chosen_miss"] > WITHIN:
            miss = "failed" if p["chosen_miss"] is None else f"{p['chosen_miss']:.1%}"
            detail.add_row(p["spec"], str(p["tokens"]), p["chosen"], f"{p['fastest']} {p['fastest_ms']:.3f} ms", miss)
    console.print(detail)
    try:
        plot(tuned, str(out / "tune_grid.png"))
    except TuningError as e:
        console.print(f"no plot: {e}")
    return {"points": points, "summary": summary, "tune_s": tuned.tuning_s, "tune_compile_s": tuned.compile_s,
            "verify_s": verify.tuning_s, "environment": tuned.environment}


def _summary(points: list[dict]) -> dict:
    out = {}
    for label in ("chosen", "static"):
        misses = [(p[f"{label}_miss"], p) for p in points]
        within = sum(m is not None and m <= WITHIN for m, _ in misses)
        worst = max(misses, key=lambda mp: math.inf if mp[0] is None else mp[0], default=(0.0, None))
        out[label] = {"within": within, "share": within / len(points) if points else 0.0,
                      "worst_miss": worst[0],
                      "worst_at": f"{worst[1]['spec']} @ {worst[1]['tokens']}" if worst[1] else "-"}
    out["met"] = out["chosen"]["share"] >= GOAL_SHARE
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results/tune"), help="output directory")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--experts", type=int, default=None, help="slice every model to this many experts")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--quants", default=",".join(QUANTS))
    ap.add_argument("--a2a", default=",".join(A2AS), help=f"of {', '.join(A2AS)}")
    ap.add_argument("--tokens", default=TOKENS, help="grid token counts (the buckets tuned)")
    ap.add_argument("--speed-buckets", default="1,4,16,64,256,1024,4096,16384")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--no-graphs", dest="graphs", action="store_false")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-choice", action="store_true")
    args = ap.parse_args()
    args.tokens, args.speed_buckets = parse_buckets(args.tokens), parse_buckets(args.speed_buckets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MOE_TUNING_CACHE"] = tempfile.mkdtemp(prefix="tune-bench-")  # never the user's
    console = Console(width=170)
    host = Host(measurements=False)  # times every runner; choices come from explicit caches
    t0 = time.perf_counter()
    result = {"speed": [] if args.skip_speed else speed(args, host, out, console)}
    if not args.skip_choice:
        result["choice"] = choice(args, host, out, console)
    result["wall_s"] = time.perf_counter() - t0
    (out / "tune_bench.json").write_text(json.dumps(result, indent=1, default=str))
    console.print(f"wrote {out / 'tune_bench.json'} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
