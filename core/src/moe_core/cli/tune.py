"""``moe tune``: time the runners of a layer over token buckets into the tuning cache;
``--show`` / ``--clear`` the cache. Also how ``moe explain`` prints a plan's selection."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import click
from rich.table import Table

from ..errors import MoEError
from ..plan import SelectedBy, Selection
from ..spec import A2A
from . import run_layer
from .common import build_spec, check_backends, console, err_console, require_device, spec_options


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_selection(sel: Selection) -> None:
    """The ``selected by`` lines of ``moe explain``: how, why, leading times per bucket."""
    style = "bold cyan" if sel.by is SelectedBy.MEASUREMENT else "dim"
    console.print(f"  selected by: [{style}]{sel.by.value}[/] ({sel.reason})", highlight=False)
    if sel.objective and sel.times:
        console.print(f"  objective: {sel.objective} (one runner per layer)", highlight=False)
    for bucket, times in sel.times:
        shown = ", ".join(f"{b} {_ms(t)} ms" for b, t in times)
        console.print(f"    {bucket:>6} tokens: {shown}", highlight=False)
    if sel.other_winners:
        wins = ", ".join(f"{b}: {w}" for b, w in sel.other_winners)
        console.print(f"  faster elsewhere: {wins}; serving those buckets with their own runner "
                      f"would hold {sel.other_winners_bytes / 2**30:.2f} GiB more processed "
                      "weights (not done: one runner per layer)", highlight=False)
    for why in sel.ignored:
        console.print(f"  [yellow]ignored[/]: {why}", highlight=False)


def _show(cache) -> None:
    from .. import default_host
    from ..tuning import environment_body, fingerprint
    from ..tuning.cache import differences, read_file

    host = default_host()
    here = environment_body(host.env.current(), host.registry)
    files = cache.files()
    console.print(f"tuning cache {cache.path}: {len(files)} file(s); this environment is "
                  f"{fingerprint(here)}", highlight=False)
    for path in files:
        loaded = read_file(path, warn=False)
        for p in loaded.problems:
            console.print(f"[yellow]ignored[/]: {p}", highlight=False)
        mine = loaded.fingerprint == fingerprint(here)
        status = ("[green]this environment[/]" if mine else
                  f"[yellow]other environment, ignored here[/]: differs in "
                  f"{differences(loaded.environment, here)}")
        table = Table(title=f"{path.name}: {status}", title_justify="left")
        for col in ("layer", "tokens", "fastest (median ms)", "note"):
            table.add_column(col, overflow="fold")
        for e in sorted(loaded.entries.values(), key=lambda e: (e.get("spec", ""), e["bucket"])):
            times = sorted(((b, m["ms"]) for b, m in e["candidates"].items() if "ms" in m),
                           key=lambda bm: bm[1])
            failed = [b for b, m in e["candidates"].items() if "error" in m]
            note = ("" if e["fingerprint"] == loaded.fingerprint else
                    f"entry of environment {e['fingerprint']}: ignored")
            note += f" failed: {', '.join(failed)}" if failed else ""
            table.add_row(str(e.get("spec", e["spec_key"])), str(e["bucket"]),
                          ", ".join(f"{b} {t:.3f}" for b, t in times[:3]), note.strip())
        console.print(table)


def _print_report(report) -> None:
    for lay in report.layers:
        console.print(f"[bold]{lay.spec.model or 'layer'}[/]: {lay.spec.describe()}", highlight=False)
        backends = sorted({m.backend for ms in lay.buckets.values() for m in ms})
        table = Table(title="median ms per call (load + first call s)", title_justify="left")
        table.add_column("tokens", justify="right")
        for b in backends:
            table.add_column(b + (" (chosen)" if b == lay.chosen else ""), justify="right")
        for bucket, ms in sorted(lay.buckets.items()):
            by = {m.backend: m for m in ms}
            cells = []
            for b in backends:
                m = by.get(b)
                cells.append("said no" if m is None else f"failed: {m.error}" if m.error else
                             f"{_ms(m.ms)} ({m.load_s + m.first_call_s:.2f} s)")
            table.add_row(str(bucket), *cells)
        console.print(table)
        for note in lay.notes:
            console.print(f"  note: {note}", highlight=False)
        if lay.selection:
            console.print(f"  resolution now picks {lay.chosen}", highlight=False)
            print_selection(lay.selection)
    console.print(f"tuned in {report.tuning_s:.1f} s ({report.timer}); apart: load and first calls "
                  f"(compiles) {report.compile_s:.1f} s, random weights {report.weights_s:.1f} s; "
                  f"cache {report.cache_file}", highlight=False)


def _writable(ctx, param, path):
    """Checked before tuning: a plot that cannot be written should cost no tuning run."""
    if path:
        folder = os.path.dirname(os.path.abspath(path))
        try:  # a real write: permission bits say nothing for root or a read-only mount
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            raise click.BadParameter(f"{path}: cannot write in {folder} ({e.strerror}; expected "
                                     "a file in an existing, writable folder)") from None
    return path


def check_buckets(spec, buckets: list[int], option: str) -> None:
    """The largest bucket's layer fits this machine's memory, as ``moe run`` plans one (less
    its pristine copy): tuning would record a failed allocation as a failed runner, exit 0."""
    from ..synthetic import run_memory_bytes

    dev = require_device(spec)
    have = run_layer.available_bytes(dev)
    budget = run_layer.MEMORY_SHARE * have
    rows = spec.ep_size if spec.a2a is not A2A.NONE else 1  # a dispatcher delivers every rank's tokens

    def fits(tokens: int) -> bool:
        return run_memory_bytes(spec, tokens * rows) <= budget

    worst = max(buckets)
    if fits(worst):
        return
    need = (f"{worst} tokens of {spec.for_tokens(worst).describe()} need about "
            f"{run_layer.gib(run_memory_bytes(spec, worst * rows))} on {dev}; {run_layer.gib(have)} "
            f"is available (a run may plan {run_layer.MEMORY_SHARE:.0%} of it)")
    most = run_layer.largest(1, worst - 1, fits)
    if most is None:  # the weights alone: no bucket is to blame
        raise click.UsageError(f"{need}. {run_layer.fitting_advice(spec, 1, budget)}")
    raise click.BadParameter(f"{need}: expected at most {most} tokens", param_hint=option)


@click.command()
@spec_options
@click.option("--buckets", default=None, metavar="N,N,...",
              help="Token counts to time (default: powers of two up to --tokens, and --tokens).")
@click.option("--iters", default=None, type=click.IntRange(1), help="Timed calls per bucket (median).")
@click.option("--warmup", default=None, type=click.IntRange(0), help="Untimed calls first.")
@click.option("--cache", "cache_path", default=None, metavar="DIR",
              help="Tuning cache directory (default: $MOE_TUNING_CACHE, else the user cache dir).")
@click.option("--objective", default=None, metavar="mean_slowdown|max_tokens|B:W,...",
              help="How one runner per layer is chosen (also $MOE_TUNING_OBJECTIVE): the mean "
                   "slowdown against the fastest over the buckets of the plan's token range (default), "
                   "the time at the max_tokens bucket, or a weighted sum, e.g. 1:0.8,4096:0.2.")
@click.option("--plot", "plot_path", default=None, metavar="PNG", callback=_writable,
              type=click.Path(dir_okay=False, writable=True), help="Also plot the times (matplotlib).")
@click.option("--show", is_flag=True, help="List the cache's files and entries; tune nothing.")
@click.option("--clear", is_flag=True, help="Delete every tuning file of the cache; tune nothing.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def tune(buckets, iters, warmup, cache_path, objective, plot_path, show, clear, progress, as_json, **o):
    """Time every runner that says yes for a model's MoE layer over token buckets, on this
    machine, and record the medians in the tuning cache that resolution reads.

    Where tokens move between ranks (--a2a), only the runner is timed (one process).
    """
    from ..tuning import TuningCache, parse_buckets, plot, token_buckets
    from ..tuning.tune import pyplot
    from ..tuning import tune as run_tune

    cache = TuningCache(cache_path, objective)
    if clear or show:
        if clear:
            gone = cache.clear()
            console.print(f"removed {len(gone)} tuning file(s) from {cache.path}", highlight=False)
        if show:
            _show(cache)
        return
    if not o["model"]:
        raise click.UsageError("--model is required to tune (or --show / --clear the cache)")
    check_backends(o["force"], o["disable"])
    spec = build_spec(o, default_tokens=4096)
    bucket_list = parse_buckets(buckets) if buckets else None
    check_buckets(spec, bucket_list or token_buckets(spec.max_tokens),
                  "--buckets" if buckets else "--tokens")
    if plot_path:
        pyplot()  # before tuning: a missing matplotlib should not cost a tuning run
    try:
        report = run_tune(spec, buckets=bucket_list,
                          force=o["force"], disable=o["disable"], cache=cache, iters=iters,
                          warmup=warmup, progress=progress and not as_json)
        if plot_path:
            plot(report, plot_path)
    except MoEError:
        raise
    except (OSError, RuntimeError) as e:
        err_console.print(f"[bold red]error:[/] tuning {spec.describe()} failed: "
                          f"{type(e).__name__}: {e}", highlight=False)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
        if plot_path:
            console.print(f"plot: {plot_path}", highlight=False)


for _p in tune.params:  # --show / --clear need no model
    if _p.name == "model":
        _p.required = False
