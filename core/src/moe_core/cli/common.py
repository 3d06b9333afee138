"""Pieces shared by the `moe` commands: consoles, spec options, input checks, and the error
boundary that turns every failure into a message and an exit status."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from contextlib import contextmanager

import click
from rich.console import Console

from ..errors import ModelConfigError, MoEError, did_you_mean
from ..isolation import ENV_DEBUG
from ..registry import PluginStatus
from ..models import ModelConfig, id_ranges, load_model_config, spec_for_model
from ..spec import A2A, Quant

#: Kernel modules the in-tree plugins look for (``--assume-installed`` accepts these, and
#: any other module a plugin asked about during this run).
#: Wrap width when output is piped: wide enough that tables and messages never wrap.
PIPED_WIDTH = 10_000


def _console(stream, **kw) -> Console:
    # Piped output is read by tools and by people scrolling logs: no wrapping mid-phrase.
    return Console(emoji=False, width=None if stream.isatty() else PIPED_WIDTH, **kw)


console = _console(sys.stdout)
err_console = _console(sys.stderr, stderr=True)

positive = click.IntRange(min=1)


def spec_options(fn):
    """The options that build a spec from a model: shared by ``explain`` and ``run``."""
    opts = [
        click.option("--model", "-m", required=True,
                     help="Bundled model name (see `moe models`) or path to a config.json."),
        click.option("--tp", default=1, show_default=True, type=positive, help="Ranks the layer spans."),
        click.option("--ep", default=1, show_default=True, type=positive,
                     help="Of those, ranks that split the experts (divides --tp)."),
        click.option("--rank", default=0, show_default=True, type=click.IntRange(min=0),
                     help="This rank, in [0, tp)."),
        click.option("--quant", type=click.Choice([q.value for q in Quant]), default=None,
                     help="Weight format (default: the model's own)."),
        click.option("--a2a", type=click.Choice([a.value for a in A2A]), default="none",
                     show_default=True),
        click.option("--arch", default="auto", show_default=True,
                     help="cpu, sm90, sm100, ... or auto (detect)."),
        click.option("--tokens", "-t", default=None, type=positive,
                     help="Max tokens per rank per forward (decode <= 256 < prefill)."),
        click.option("--layer", default=None, type=click.IntRange(min=0),
                     help="Decoder layer whose experts to plan, where the config sizes them per "
                          "layer (default: the first MoE layer)."),
        click.option("--experts", default=None, type=positive,
                     help="Keep only this many experts (a slice of the model; at least its top-k)."),
        click.option("--top-k", "top_k", default=None, type=positive,
                     help="Experts per token (default: the model's); to slice below its top-k."),
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


def assume_installed_option(fn):
    return click.option(
        "--assume-installed", default="", metavar="MODULES",
        help="Comma-separated kernel modules to treat as installed (plan for another machine, "
             "with --arch): e.g. flashinfer,deep_gemm (the modules installed plugins require). "
             "Also $MOE_ASSUME_INSTALLED.")(fn)


def build_spec(o: dict, default_tokens: int):
    """The spec the options describe; a slice's expert count and top-k are checked against
    the model's here, so a mistake is named instead of silently changed. Where the model's
    MoE layers differ and ``--layer`` chose none, a note on stderr says which one this is."""
    cfg = o["model"] if isinstance(o["model"], ModelConfig) else load_model_config(o["model"])
    note = None if o.get("layer") is not None else layer_note(cfg)
    if note:
        err_console.print(note, highlight=False)
    if o.get("layer") is not None:
        try:
            cfg = cfg.for_layer(o["layer"])
        except ModelConfigError as e:
            raise click.BadParameter(str(e), param_hint="--layer") from None
    experts, top_k = o["experts"], o.get("top_k")
    if experts is not None and experts > cfg.num_experts:
        raise click.BadParameter(f"{experts}, but {cfg.name} has {cfg.num_experts} experts "
                                 f"(expected 1 to {cfg.num_experts})", param_hint="--experts")
    kept = experts or cfg.num_experts
    if top_k is None and cfg.top_k > kept:
        raise click.BadParameter(
            f"{experts} is fewer than the {cfg.top_k} experts {cfg.name} routes each token to "
            f"(expected --experts {cfg.top_k} or more, or --top-k at most {experts} as well)",
            param_hint="--experts")
    if top_k is not None and top_k > kept:
        raise click.BadParameter(f"{top_k}, but only {kept} experts are kept (expected at most "
                                 f"{kept})", param_hint="--top-k")
    spec = spec_for_model(
        cfg, tp=o["tp"], ep=o["ep"], rank=o["rank"], quant=o["quant"], a2a=o["a2a"],
        arch=o["arch"], max_tokens=default_tokens if o["tokens"] is None else o["tokens"],
        experts=experts, act_dtype=o["act_dtype"], sbo=o["sbo"],
        down_gemm_overlap=o["down_gemm_overlap"], static_input_scale=o["static_input_scale"])
    return spec if top_k is None else dataclasses.replace(spec, top_k=top_k)


_DEVICE = {"cuda": "a CUDA device", "npu": "an NPU device (torch_npu)"}


def require_device(spec) -> str:
    """The torch device type ``spec``'s tensors live on; a usage error when this machine has
    none (torch would fail only at the first allocation, deep inside a run)."""
    import torch

    from ..weights import device_type

    dev = device_type(spec)
    backend = getattr(torch, dev, None)  # torch.npu exists once torch_npu is imported
    if dev != "cpu" and not (backend is not None and backend.is_available()):
        raise click.UsageError(f"arch {spec.arch} needs {_DEVICE.get(dev, dev)} and none is present "
                               "(use --arch cpu or --arch auto)")
    return dev


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def check_backends(force: str | None, disable: str | None) -> None:
    """Every ``plugin[:variant]`` named by ``--force``/``--disable`` (or ``$MOE_BACKEND``/
    ``$MOE_DISABLE``, which the host reads when the options are absent) is installed.

    Checked here rather than in the host: a library caller may name a plugin that is not
    installed on purpose (one config for many machines); a person typing it has a typo."""
    from .. import default_host
    from ..host import ENV_DISABLE, ENV_FORCE

    installed = {r.name: {v.name for v in r.variants} if r.status is PluginStatus.OK else None
                 for r in default_host().registry}
    given = [("--force {}", force), ("--disable {}", disable)]
    given += [(f"{ENV_FORCE}={{}}", os.environ.get(ENV_FORCE))] if force is None else []
    given += [(f"{ENV_DISABLE}={{}}", os.environ.get(ENV_DISABLE))] if disable is None else []
    for label, text in given:
        for sel in _names(text):
            _check_selector(label.format(sel), sel, installed)


def _check_selector(source: str, sel: str, installed: dict) -> None:
    plugin, _, variant = sel.partition(":")
    if plugin not in installed:
        raise click.UsageError(f"{source}: no installed plugin named {plugin!r} (expected one of: "
                               f"{', '.join(sorted(installed))}){did_you_mean(plugin, installed)}")
    variants = installed[plugin]  # None: a broken plugin, whose variants are unknown
    if variant and variants is not None and variant not in variants:
        full = sorted(f"{plugin}:{v}" for v in variants)
        raise click.UsageError(f"{source}: plugin {plugin!r} has no variant {variant!r} (expected "
                               f"one of: {', '.join(full)}){did_you_mean(sel, full)}")


def check_assumed(modules: str) -> None:
    """Every module named by ``--assume-installed`` (or ``$MOE_ASSUME_INSTALLED``, which the
    host reads too) is one an installed plugin's variants require (the modules the host's
    environment probed)."""
    from .. import default_host
    from ..environment import ENV_ASSUME

    known = {m.name for m in default_host().env.modules}
    for hint, text in (("--assume-installed", modules), (f"${ENV_ASSUME}", os.environ.get(ENV_ASSUME))):
        for name in _names(text):
            if name not in known:
                raise click.BadParameter(
                    f"{name!r} is not a kernel module any installed plugin looks for (expected one "
                    f"of: {', '.join(sorted(known))}){did_you_mean(name, known)}", param_hint=hint)


def layer_note(cfg: ModelConfig) -> str | None:
    """A line for a model whose MoE layers differ in shape: which layer a spec of it is by
    default, and that ``--layer`` plans the others."""
    shapes: dict[tuple, list[int]] = {}
    for s in cfg.layers:
        shapes.setdefault((s.num_experts, s.top_k, s.moe_intermediate_size), []).append(s.index)
    if len(shapes) < 2:
        return None
    kinds = "; ".join(f"layers {id_ranges(ids)}: E={e} top{k} I={i}" for (e, k, i), ids in shapes.items())
    return (f"note: {cfg.name}'s MoE layers differ ({kinds}); this is layer {cfg.layers[0].index}, "
            "--layer N plans another")


@contextmanager
def stage(what: str, quiet: bool = False):
    """Print ``what ...`` to stderr as a slow step starts and its time when it ends."""
    if not quiet:
        err_console.print(f"{what} ...", end="", highlight=False)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        if not quiet:
            err_console.print()  # the error message starts on its own line
        raise
    if not quiet:
        err_console.print(f" {time.perf_counter() - t0:.1f} s", highlight=False)


def _out_of_memory(e: Exception) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"  # torch's


class MoEGroup(click.Group):
    """The error boundary of every ``moe`` command: no traceback reaches the user.

    Bad input (a moe-core error, a file that cannot be read or written) exits 2 with the
    message; anything else is a bug and exits 1 with one line saying so (``--debug`` or
    ``MOE_DEBUG=1`` re-raises it, traceback and all). KeyboardInterrupt stays click's.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (MoEError, OSError) as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False)
            sys.exit(2)
        except Exception as e:
            if _out_of_memory(e):
                err_console.print(f"[bold red]error:[/] out of memory ({e}); run a smaller layer "
                                  "(--experts, --tokens)", highlight=False)
                sys.exit(2)
            if ctx.params.get("debug"):
                raise
            err_console.print(
                f"[bold red]internal error[/] (a bug in moe-core or a plugin): {type(e).__name__}: "
                f"{e}. Rerun with `moe --debug ...` or {ENV_DEBUG}=1 for the traceback.",
                highlight=False)
            sys.exit(1)
