"""``moe matrix``: resolve every bundled model over TP x EP x quant x a2a x arch."""

from __future__ import annotations

import json
import time

import click
from rich.progress import Progress
from rich.table import Table

from .. import assume_installed as assuming, default_host
from ..matrix import ERROR, run_matrix, summarize, to_html, to_json
from .common import assume_installed_option, check_assumed, check_backends, console, err_console


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Every cell and the summary as JSON.")
@click.option("--html", "html_file", type=click.File("w", encoding="utf-8", lazy=False),
              help="Write a self-contained heatmap page here.")
@assume_installed_option
def matrix(as_json, html_file, assume_installed):
    """The compatibility matrix of the bundled models.

    Every model (its own quant and bf16) x TP {1,2,4,8} x EP {1,8} x a2a {none,
    deepep_normal, deepep_ll} x arch {sm90, sm100}, resolved with the installed plugins
    (and the kernel modules --assume-installed names, as on a GPU machine that has them).
    Exits 1 if any cell raised an unexpected exception.
    """
    check_backends(None, None)
    check_assumed(assume_installed)
    with assuming(assume_installed):
        host = default_host()
        t0 = time.perf_counter()
        with Progress(console=err_console, transient=True, disable=as_json) as bar:
            task = bar.add_task("resolving", total=None)
            cells = run_matrix(host, progress=lambda done, total: bar.update(task, completed=done,
                                                                             total=total))
        seconds = time.perf_counter() - t0
    if html_file:
        html_file.write(to_html(cells, seconds))
    if as_json:
        click.echo(json.dumps(to_json(cells, seconds), indent=2))
    else:
        _print_summary(summarize(cells), len(cells), seconds)
        if html_file:
            console.print(f"wrote {html_file.name}", highlight=False)
    errors = [c for c in cells if c.status == ERROR]
    for c in errors:
        err_console.print(f"[bold red]unexpected exception[/] {c.model} {c.arch} {c.column}: {c.reason}")
    if errors:
        raise SystemExit(1)


def _print_summary(summary: dict, total: int, seconds: float) -> None:
    console.print(f"{total} cells resolved in {seconds:.2f} s")
    for arch, s in summary.items():
        table = Table(title=f"{arch}: {s['cells']} cells")
        table.add_column("backend / outcome")
        table.add_column("cells", justify="right")
        for name, n in s["by_backend"].items():
            table.add_row(name, str(n))
        console.print(table)
        if s["invalid_by_field"]:
            fields = ", ".join(f"{f} ({n})" for f, n in s["invalid_by_field"].items())
            console.print(f"invalid layouts, by the spec field that rejected them: {fields}", highlight=False)
        if s["reference_because"]:
            why = Table(title=f"{arch}: why cells fall to the reference backend (top reasons)")
            for col in ("cells", "candidate", "reason"):
                why.add_column(col, overflow="fold")
            for r in s["reference_because"]:
                why.add_row(str(r["cells"]), r["backend"], r["reason"])
            console.print(why)
