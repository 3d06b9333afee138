"""``moe hf``: a small random transformers model of a bundled (or given) MoE config, its MoE
layers swapped for the resolved backends, logits checked against the untouched model."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from ..models import load_model_config
from .common import check_backends, console, err_console, positive
from .run_layer import MEMORY_SHARE, available_bytes

#: Relative logit difference allowed (bf16 weights and activations on both sides).
TOLERANCE = 2e-2
#: Widths are multiples of this: bf16 grouped GEMMs need 16-byte strides, and the rotary
#: halves of a head (hidden / 4 heads in the Qwen and OLMoE families) must be whole.
ALIGN = 8


def _size(most: int, align: int = 1):
    """A size option's check past ``positive``: bounded, as the model is one for a check, not
    a real one (what fits in memory is checked too)."""
    def check(ctx, param, value):
        if value > most:
            raise click.BadParameter(f"{value} is above {most} (expected 1 to {most}: a small model "
                                     "for a check)")
        if value % align:
            raise click.BadParameter(f"{value} is not a multiple of {align} (expected e.g. "
                                     f"{max(align, value // align * align)}: bf16 grouped GEMMs "
                                     "need 16-byte rows)")
        return value
    return check


@click.command("hf")
@click.option("-m", "--model", default="Qwen/Qwen3-30B-A3B", show_default=True,
              help="A bundled model (its transformers family is used, shrunk).")
@click.option("--hf-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A Hugging Face config.json instead (its model_type is used, shrunk).")
@click.option("--layers", default=2, show_default=True, type=positive, callback=_size(64))
@click.option("--experts", default=8, show_default=True, type=positive, callback=_size(512))
@click.option("--hidden", default=128, show_default=True, type=positive, callback=_size(16384, ALIGN),
              help=f"The model width (a multiple of {ALIGN}).")
@click.option("--intermediate", default=64, show_default=True, type=positive,
              callback=_size(16384, ALIGN), help=f"Each expert's intermediate size (a multiple of {ALIGN}).")
@click.option("--tokens", default=32, show_default=True, type=positive, callback=_size(4096))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the per-layer report as JSON.")
def hf(model, hf_config, layers, experts, hidden, intermediate, tokens, device, as_json):
    """Run a small random model of a transformers MoE family through moe-core.

    Exits 0 when every swapped layer matches transformers' own experts module on the same
    inputs within the bf16 tolerance (the logits difference is reported too).
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from ..integrations.transformers import TESTED_FAMILIES, apply, tiny_config
    except ImportError as e:
        err_console.print(f"[red]error:[/] {e}. Install the extra: pip install 'moe-core[transformers]'")
        sys.exit(2)
    check_backends(None, None)  # apply() reads $MOE_BACKEND / $MOE_DISABLE
    mt = load_model_config(hf_config or model).model_type
    kinds = getattr(AutoConfig.for_model(mt), "layer_types", None) if mt in TESTED_FAMILIES else None
    if kinds and layers > len(kinds):  # tiny_config slices this list: one kind per layer
        raise click.BadParameter(f"{layers}, but transformers' {mt} config lists {len(kinds)} layer "
                                 f"types (expected at most {len(kinds)})", param_hint="--layers")
    # Experts dominate: built in fp32 on the CPU, then a bf16 copy and the backend's own.
    need, have = 8 * layers * experts * 3 * hidden * intermediate, available_bytes("cpu")
    if need > MEMORY_SHARE * have:
        raise click.UsageError(
            f"--layers {layers} --experts {experts} --hidden {hidden} --intermediate {intermediate}: "
            f"the model's experts need about {need / 2**30:.1f} GiB; {have / 2**30:.1f} GiB is "
            f"available (a run may plan {MEMORY_SHARE:.0%} of it). Lower one of them.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"cuda, but this torch {torch.__version__} sees no CUDA device "
                                 "(expected cpu or auto here)", param_hint="--device")
    torch.manual_seed(0)
    cfg = tiny_config(mt, layers=layers, experts=experts, hidden=hidden, intermediate=intermediate)
    net = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, tokens), device=device)
    with torch.no_grad():
        before = net(ids).logits.float()
        report = apply(net)
        after = net(ids).logits.float()
    layer_err = report.layer_errors(net, ids)
    err = ((after - before).norm() / before.norm()).item()
    ok = max(layer_err.values()) < TOLERANCE
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "model_type": mt, "logit_rel_error": err,
                               "layer_rel_errors": layer_err}, indent=2))
    else:
        table = Table(title=f"{type(net).__name__} ({mt}, {layers} layers, {experts} experts, "
                            f"random weights, {device})")
        for col in ("layer", "experts module", "backend", "why", "rel. error vs the module"):
            table.add_column(col, overflow="fold")
        for r in report.layers:
            table.add_row(r.name, r.module_class, str(r.plan.backend), r.plan.reason,
                          f"{layer_err[r.name]:.1e}")
        console.print(table)
        console.print(f"every layer within {TOLERANCE:g} of transformers' own experts: "
                      f"{'yes' if ok else 'NO'}; logits vs the untouched model: relative error "
                      f"{err:.2e}", highlight=False)
    sys.exit(0 if ok else 1)
