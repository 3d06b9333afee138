"""Resolution speed: import + discovery, resolve() cold and cached, 10,000 distinct specs.

Goal (issue #2): 10,000 distinct specs in under 2 s on a CI-class CPU, and neither
``import moe_core`` nor discovery importing a kernel library (or torch).

    python benchmarks/resolve_bench.py [--specs 10000]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from moe_core import Host, MoESpec, SpecError, bundled_models, spec_for_model
from moe_core.matrix import run_matrix

KERNEL_LIBS = ("torch", "deep_gemm", "flashinfer", "deep_ep")


def cold_import_and_discovery() -> tuple[float, float, list[str]]:
    code = (
        "import time, sys; t0 = time.perf_counter(); import moe_core; t1 = time.perf_counter(); "
        "moe_core.default_host(); t2 = time.perf_counter(); "
        f"print(t1 - t0, t2 - t1, [m for m in {KERNEL_LIBS!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imp, disc, loaded = out.stdout.strip().split(" ", 2)
    return float(imp), float(disc), eval(loaded)


def distinct_specs(n: int) -> list[MoESpec]:
    """Up to ``n`` distinct valid specs over the bundled models and parallel layouts."""
    specs: dict[MoESpec, None] = {}
    grid = itertools.product(
        bundled_models().values(), (1, 2, 4, 8), (1, 2, 4, 8), ("none", "deepep_normal", "deepep_ll"),
        ("sm90", "sm100", "cpu"), (None, "bf16", "fp8_block128", "nvfp4"), (64, 128, 4096, 16384))
    for model, tp, ep, a2a, arch, quant, tokens in grid:
        if len(specs) >= n:
            break
        try:
            s = spec_for_model(model, tp=tp, ep=ep, a2a=a2a, arch=arch, quant=quant, max_tokens=tokens)
        except SpecError:
            continue
        specs[s] = None
    return list(specs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", type=int, default=10_000)
    args = ap.parse_args()

    imp, disc, loaded = cold_import_and_discovery()
    t0 = time.perf_counter()
    specs = distinct_specs(args.specs)
    build = time.perf_counter() - t0

    # explain() is the whole resolution and never raises: some grid specs fit no backend
    # (e.g. expert TP inside EP under DeepEP), which is an answer, not an error.
    host = Host()
    t0 = time.perf_counter()
    host.explain(specs[0])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(1000):
        host.explain(specs[0])
    cached = (time.perf_counter() - t0) / 1000

    host = Host(cache_size=len(specs))  # fresh: no verdict or plan cached
    t0 = time.perf_counter()
    planned = sum(host.explain(s).plan is not None for s in specs)
    total = time.perf_counter() - t0

    t0 = time.perf_counter()
    cells = run_matrix(Host())
    matrix_s = time.perf_counter() - t0

    table = Table(title="moe-core resolution benchmark")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("import moe_core (cold process)", f"{imp * 1e3:.1f} ms")
    table.add_row("plugin discovery (entry points)", f"{disc * 1e3:.1f} ms")
    table.add_row("kernel libraries / torch imported", ", ".join(loaded) or "none")
    table.add_row("explain(), first spec (cold)", f"{first * 1e6:.0f} us")
    table.add_row("explain(), cached", f"{cached * 1e6:.2f} us")
    table.add_row(f"build {len(specs)} distinct specs", f"{build:.3f} s")
    table.add_row(f"resolve {len(specs)} distinct specs ({planned} with a plan)",
                  f"{total:.3f} s ({total / len(specs) * 1e6:.0f} us each)")
    table.add_row(f"moe matrix: {len(cells)} cells (fresh host)", f"{matrix_s:.3f} s")
    table.add_row("goal: 10,000 specs < 2 s", "met" if total * 10_000 / len(specs) < 2 else "NOT met")
    Console().print(table)


if __name__ == "__main__":
    main()
