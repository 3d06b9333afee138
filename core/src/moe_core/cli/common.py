"""Pieces shared by the `moe` commands: consoles, spec options, error reporting."""

from __future__ import annotations

import functools
import sys

import click
from rich.console import Console

from ..errors import MoEError
from ..models import spec_for_model
from ..spec import A2A, Quant

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

def spec_options(fn):
    """The options that build a spec from a model: shared by ``explain`` and ``run``."""
    opts = [
        click.option("--model", "-m", required=True,
                     help="Bundled model name (see `moe models`) or path to a config.json."),
        click.option("--tp", default=1, show_default=True, help="Ranks the layer spans."),
        click.option("--ep", default=1, show_default=True,
                     help="Of those, ranks that split the experts (divides --tp)."),
        click.option("--rank", default=0, show_default=True, help="This rank, in [0, tp)."),
        click.option("--quant", type=click.Choice([q.value for q in Quant]), default=None,
                     help="Weight format (default: the model's own)."),
        click.option("--a2a", type=click.Choice([a.value for a in A2A]), default="none",
                     show_default=True),
        click.option("--arch", default="auto", show_default=True,
                     help="cpu, sm90, sm100, ... or auto (detect)."),
        click.option("--tokens", "-t", default=None, type=int,
                     help="Max tokens per rank per forward (decode <= 256 < prefill)."),
        click.option("--experts", default=None, type=int,
                     help="Keep only this many experts (a slice of the model)."),
        click.option("--act-dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16",
                     show_default=True),
        click.option("--sbo/--no-sbo", default=False, help="Request single-batch overlap."),
        click.option("--down-gemm-overlap/--no-down-gemm-overlap", default=False,
                     help="Request down-GEMM overlap (with --sbo)."),
        click.option("--static-input-scale/--no-static-input-scale", default=False,
                     help="The checkpoint has static activation scales (NVFP4 input_global_scale)."),
        click.option("--force", default=None,
                     help="plugin[:variant] to use (also $MOE_BACKEND); an error if it cannot run."),
        click.option("--disable", default=None,
                     help="Comma-separated plugin[:variant] to forbid (also $MOE_DISABLE)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def build_spec(o: dict, default_tokens: int):
    return spec_for_model(
        o["model"], tp=o["tp"], ep=o["ep"], rank=o["rank"], quant=o["quant"], a2a=o["a2a"],
        arch=o["arch"], max_tokens=o["tokens"] or default_tokens, experts=o["experts"],
        act_dtype=o["act_dtype"], sbo=o["sbo"], down_gemm_overlap=o["down_gemm_overlap"],
        static_input_scale=o["static_input_scale"])


def reports_errors(fn):
    """Turn moe-core errors into a message and exit status 2 instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoEError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False)
            sys.exit(2)
    return wrapper
