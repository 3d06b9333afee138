"""The kit's checks as plain functions (pytest-free, so they can be called from anywhere)."""

from __future__ import annotations

import torch

from ..arch import detect_arch
from ..errors import InputError, WeightsMutated
from ..host import Host
from ..declare import Reason
from ..plan import Candidate, Plan, Status
from ..registry import PluginStatus
from ..quant import tolerance
from ..reference.oracle import relative_error
from ..runner import contiguous_layout, masked_layout, valid_rows
from ..spec import MoESpec
from ..tokens import Layout
from ..synthetic import random_inputs, random_weights

REFERENCE = "reference:loop"
#: Reasons that say nothing an operator could act on.
GENERIC_REASONS = {"", "no", "not supported", "unsupported", "not implemented", "declined", "n/a",
                   "false", "none", "error"}


class ConformanceError(AssertionError):
    """A plugin broke the contract; the message says which promise, for which spec."""


def is_specific(reason: str) -> bool:
    text = reason.strip().rstrip(".").lower()
    return text not in GENERIC_REASONS and len(text) >= 12


def not_runnable_here(spec: MoESpec) -> str | None:
    """Why a spec's layer cannot run on this machine, or None."""
    if spec.arch == "cpu":
        return None
    if not torch.cuda.is_available():
        return f"arch {spec.arch} needs that GPU; this machine has no CUDA device"
    here = detect_arch()
    return None if here == spec.arch else f"arch {spec.arch} needs that GPU; this machine is {here}"


def plugin_candidates(host: Host, plugin: str, spec: MoESpec) -> list[Candidate]:
    """The plugin's candidates for ``spec``, after checking each is well-formed."""
    rec = host.registry.records.get(plugin)
    if rec is None:
        raise ConformanceError(f"no plugin named {plugin!r} is installed "
                               f"(installed: {', '.join(r.name for r in host.registry)})")
    if rec.status is not PluginStatus.OK:
        raise ConformanceError(f"plugin {plugin!r} is broken: {rec.error}")
    # "" and (): ignore MOE_BACKEND / MOE_DISABLE, which must not change what is checked
    mine = [c for c in host.explain(spec, force="", disable=()).candidates if c.plugin == plugin]
    for c in mine:
        if c.status is Status.BROKEN:
            raise ConformanceError(f"{c.backend} broke a hook on {spec.describe()}: {c.reason}")
        if c.status is Status.DECLINED and c.code is Reason.UNSPECIFIED:
            raise ConformanceError(f"{c.backend} declined {spec.describe()} without a reason code "
                                   f"(Verdict.no(variant, text) is deprecated): {c.reason!r}")
        if c.status is Status.DECLINED and not is_specific(c.reason):
            raise ConformanceError(f"{c.backend} declined {spec.describe()} with a reason that "
                                   f"says nothing specific: {c.reason!r}")
    return mine


def _run(layer, plan: Plan, x, tw, ti):
    """Run ``layer`` in ``plan``'s token layout; returns comparable rows."""
    spec = plan.spec
    if plan.dispatch.layout is Layout.STANDARD:
        return layer(x, tw, ti)
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    if plan.dispatch.layout is Layout.CONTIGUOUS:
        return layer.run_contiguous(rows, offsets)
    masked, counts = masked_layout(rows, offsets)
    out = layer.run_masked(masked, counts)
    return out[valid_rows(counts, out.shape[1])]


def check_run(host: Host, backend: str, spec: MoESpec, *, tokens: int = 16, seed: int = 0) -> float:
    """Load and run ``backend`` (which said yes) on ``spec``; compare with the reference.

    :return: the relative error against the reference backend.
    :raises ConformanceError: naming the broken promise.
    """
    where = f"{backend} said yes to {spec.describe()}, but"
    weights = random_weights(spec, seed=seed)
    before = {k: v.clone() for k, v in weights.tensors().items()}
    tokens = min(tokens, spec.max_tokens)
    x, tw, ti = random_inputs(spec, tokens, seed=seed + 1)
    try:
        plan = host.resolve(spec, force=backend, disable=())
        layer = host.load(plan, weights, verify=True)
        out = _run(layer, plan, x, tw, ti)
    except WeightsMutated as e:
        raise ConformanceError(f"{where} it modified the caller's {', '.join(e.names)} in "
                               "process_weights (it must leave its inputs unchanged)") from e
    except Exception as e:
        raise ConformanceError(f"{where} loading or running it raised {type(e).__name__}: {e}") from e
    ref_layer = host.load(host.resolve(spec, force=REFERENCE, disable=()), weights)
    expected = _run(ref_layer, plan, x, tw, ti)
    if tuple(out.shape) != tuple(expected.shape) or out.dtype != expected.dtype:
        raise ConformanceError(f"{where} it returned {tuple(out.shape)} {out.dtype}; expected "
                               f"{tuple(expected.shape)} {expected.dtype}")
    err = relative_error(out, expected)
    tol = tolerance(spec.quant)
    if not err <= tol:  # also catches NaN
        raise ConformanceError(f"{where} its output differs from the reference by {err:.3g} "
                               f"(relative; tolerance {tol:g} for {spec.quant.value})")
    for name, t in weights.tensors().items():
        if not torch.equal(before[name].view(torch.uint8), t.view(torch.uint8)):
            raise ConformanceError(f"{where} it modified the caller's {name} (process_weights and "
                                   "runners must not mutate their inputs)")
    if plan.dispatch.layout is Layout.STANDARD:
        _check_edges(layer, x, tw, ti, where)
    return err


def _check_edges(layer, x, tw, ti, where: str) -> None:
    try:
        empty = layer(x[:0], tw[:0], ti[:0])
    except Exception as e:
        raise ConformanceError(f"{where} an empty batch raised {type(e).__name__}: {e}") from e
    if tuple(empty.shape) != (0, x.shape[1]):
        raise ConformanceError(f"{where} an empty batch returned shape {tuple(empty.shape)}")
    wrong = x.float() if x.dtype != torch.float32 else x.bfloat16()
    try:
        layer(wrong, tw, ti)
    except InputError:
        pass
    except Exception as e:
        raise ConformanceError(f"{where} bad input raised {type(e).__name__} instead of a "
                               f"moe_core error: {e}") from e
    else:
        raise ConformanceError(f"{where} it accepted hidden states of dtype {wrong.dtype}")
