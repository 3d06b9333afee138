"""The ``moe`` command: ``plugins``, ``models``, ``explain``, ``run``, ``matrix``, ``tune``."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from .. import assume_installed as assuming, default_host
from ..models import bundled_models
from ..plan import Resolution, Status
from ..isolation import ENV_DEBUG
from .common import (MoEGroup, assume_installed_option, build_spec, check_assumed, check_backends,
                     console, spec_options)
from .hf import hf
from .matrix_cmd import matrix
from .new_plugin import new_plugin
from .run_layer import run
from .tune import print_selection, tune

_STATUS_STYLE = {Status.CHOSEN: "bold green", Status.SUPPORTED: "green", Status.DECLINED: "yellow",
                 Status.DISABLED: "magenta", Status.NOT_FORCED: "dim", Status.BROKEN: "bold red"}


@click.group(cls=MoEGroup)
@click.version_option(package_name="moe-core")
@click.option("--debug", is_flag=True, envvar=ENV_DEBUG,
              help=f"Show the traceback of an internal error, and of every plugin hook that "
                   f"failed, with its file and line (also {ENV_DEBUG}=1).")
def main(debug):
    """Resolve, prepare and run the MoE kernel backend of a layer, and explain the choice."""
    if debug:  # the host keeps hook tracebacks in its traces, for this command only
        host = default_host()
        before, host.debug = host.debug, True
        click.get_current_context().call_on_close(lambda: setattr(host, "debug", before))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json):
    """Installed plugins: version, variants, load status (broken ones with their error)."""
    records = list(default_host().registry)
    if as_json:
        click.echo(json.dumps([{
            "name": r.name, "distribution": r.distribution, "version": r.version, "status": r.status,
            "source": r.source, "error": r.error,
            "variants": [{"name": v.name, "priority": v.priority, "kind": v.kind, "summary": v.summary}
                         for v in r.variants]} for r in records], indent=2))
        return
    table = Table(title="moe-core plugins (entry-point group moe_core.plugins)")
    for col in ("plugin", "distribution", "status", "variants (priority, kind)"):
        table.add_column(col, overflow="fold")
    for r in records:
        dist = f"{r.distribution or '?'} {r.version or ''}".strip()
        if r.status != "ok":
            table.add_row(r.name, dist, "[bold red]broken[/]", r.error or "")
            continue
        variants = "\n".join(f"{v.name} ({v.priority}, {v.kind}): {v.summary}" for v in r.variants)
        table.add_row(r.name, dist, "[green]ok[/]", variants or "(none)")
    console.print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json):
    """The bundled model catalogue."""
    cat = bundled_models()
    if as_json:
        click.echo(json.dumps({n: {"experts": m.num_experts, "top_k": m.top_k, "hidden": m.expert_hidden,
                                   "intermediate": m.moe_intermediate_size,
                                   "activation": m.activation.value, "quant": m.quant.value,
                                   "router": m.router.kind} for n, m in cat.items()}, indent=2))
        return
    table = Table(title=f"{len(cat)} bundled models")
    for col in ("model", "experts", "top-k", "hidden", "intermediate", "activation", "quant", "router"):
        table.add_column(col)
    for n, m in cat.items():
        table.add_row(n, str(m.num_experts), str(m.top_k), str(m.expert_hidden),
                      str(m.moe_intermediate_size), m.activation.value, m.quant.value, m.router.kind)
    console.print(table)


def print_resolution(res: Resolution) -> None:
    console.print(f"[bold]spec[/] {res.spec.model or ''}: {res.spec.describe()}", highlight=False)
    if res.force or res.disable:
        console.print(f"force={res.force or '-'} disable={','.join(res.disable) or '-'}")
    _print_candidates(res.candidates, "runner")
    p = res.plan
    if p is None:
        console.print("[bold red]no backend can run this spec[/]")
        _print_tracebacks(res.candidates)
        return
    d = p.dispatch
    console.print(f"[bold green]chosen[/] {p.backend}: {p.reason}", highlight=False)
    pad = (f"{p.intermediate_padded} (padded from {p.spec.intermediate_per_partition})"
           if p.padded else str(p.intermediate_padded))
    console.print(f"  intermediate per partition: {pad}", highlight=False)
    console.print(f"  dispatch: {d.describe()}", highlight=False)
    console.print(f"  dispatcher: {p.dispatcher or 'none (tokens stay on this rank)'}", highlight=False)
    ov = p.overlap
    console.print(f"  overlap: sbo={ov.sbo} down_gemm={ov.down_gemm}"
                  f"{' (' + ov.reason + ')' if ov.reason else ''}", highlight=False)
    graph = ("capturable (the runner declares graph_safe)" if p.graph_safe
             else "no: eager (the runner does not declare graph_safe)")
    console.print(f"  cuda graph: {graph}", highlight=False)
    if p.selection:
        print_selection(p.selection)
    if p.dispatchers:
        _print_candidates(p.dispatchers, "dispatcher")
    _print_tracebacks(res.candidates + p.dispatchers)


def _print_tracebacks(candidates) -> None:
    for c in candidates:
        if c.debug:
            console.print(f"[bold red]{c.backend}[/] traceback:\n{c.debug}", highlight=False)


def _print_candidates(candidates, kind: str) -> None:
    table = Table(title=f"{kind} candidates", title_justify="left")
    for col in ("status", kind, "priority", "code", "reason"):
        table.add_column(col, overflow="fold")
    for c in candidates:
        table.add_row(f"[{_STATUS_STYLE[c.status]}]{c.status}[/]", str(c.backend), str(c.priority),
                      c.code.value if c.code else "", c.reason)
    console.print(table)


@main.command()
@spec_options
@click.option("--json", "as_json", is_flag=True, help="Print {spec, chosen, plan, candidates}.")
@assume_installed_option
def explain(as_json, assume_installed, **o):
    """Why this backend: every candidate with its verdict and reason.

    Exits 0 when a backend is chosen, 2 (with the reasons) when none fits.
    """
    check_backends(o["force"], o["disable"])
    spec = build_spec(o, default_tokens=4096)
    check_assumed(assume_installed)
    with assuming(assume_installed):
        res = default_host().explain(spec, force=o["force"], disable=o["disable"])
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
    else:
        print_resolution(res)
    if res.plan is None:
        sys.exit(2)


main.add_command(run)
main.add_command(matrix)
main.add_command(hf)
main.add_command(new_plugin)
main.add_command(tune)
