"""The kit's checks as plain functions (pytest-free, so they can be called from anywhere).

Every :class:`ConformanceError` names the broken promise on its first line, with the spec
and its activation dtype, and carries the call that reproduces it (:attr:`ConformanceError.call`,
rendered into a one-line command by :func:`reproduction`).
"""

from __future__ import annotations

import dataclasses
import shlex
from enum import Enum
from typing import Any, Sequence

import torch

from ..arch import detect_arch
from ..declare import Reason
from ..dispatch import DispatchConfig
from ..errors import InputError, WeightsMutated
from ..host import Host
from ..isolation import HookFailed
from ..plan import Backend, Candidate, Plan, Status
from ..quant import tolerance
from ..reference.oracle import relative_error
from ..registry import PluginStatus
from ..runner import contiguous_layout, masked_layout, valid_rows
from ..spec import A2A, MoESpec, Quant
from ..synthetic import random_inputs, random_weights
from ..tokens import MODE_LAYOUTS, Layout, Wire, lossless_wires, quantized_delivery
from ..weights import torch_equal_bits
from . import round_trip
from .round_trip import REFERENCE

#: Reasons that say nothing an operator could act on.
GENERIC_REASONS = {"", "no", "not supported", "unsupported", "not implemented", "declined", "n/a",
                   "false", "none", "error"}
#: Relative error a round trip may add, by wire format: bf16 rounding of the partial sums;
#: FP8 1x128 groups (a wire that re-rounds the layer's activations).
WIRE_TOLERANCE = {Wire.BF16: 1e-2, Wire.FP8: 6e-2, Wire.FP8_UE8M0: 6e-2, Wire.NVFP4: 6e-2}
#: Formats whose activation scale spans an expert's whole batch (per tensor, or a global
#: scale): over EP that batch holds every rank's tokens, not one rank's, so the output may
#: differ from one process's by what the format allows (its tolerance), whatever the wire.
BATCH_SCALED = {Quant.FP8_TENSOR, Quant.NVFP4}


class ConformanceError(AssertionError):
    """A plugin broke the contract; the message says which promise, for which spec.

    :param call: the check call that raises it again, e.g. ``check_run(host, 'p:v',
        MoESpec(...))`` (``host``: the host under test).
    """

    def __init__(self, message: str, call: str | None = None):
        super().__init__(message)
        self.call = call


def literal(value: Any) -> str:
    """``value`` as Python source that evaluates to it: dataclasses (MoESpec,
    DispatchConfig) as constructor calls with their non-default fields, enums by value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        args = []
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.default is dataclasses.MISSING or v != f.default:
                args.append(f"{f.name}={literal(v)}")
        return f"{type(value).__name__}({', '.join(args)})"
    if isinstance(value, Enum):
        return repr(value.value)
    return repr(value)


def reproduction(call: str, factory: str = "", debug: bool = False) -> str:
    """A shell command that runs ``call`` (see :class:`ConformanceError`) against the host
    ``factory`` builds (``module:function``; ``""``: the installed plugins)."""
    func = call.partition("(")[0]
    if factory:
        module, _, name = factory.partition(":")
        make = f"from {module} import {name or 'host'} as make_host; host = make_host()"
    else:
        make = "from moe_core import Host; host = Host()"
    code = (f"from moe_core import DispatchConfig, MoESpec; {make}; "
            f"from moe_core.conformance.checks import {func}; {call}")
    # Double quotes as one would type it, where the shell leaves the code alone.
    quoted = f'"{code}"' if not set(code) & set('"$`\\!') else shlex.quote(code)
    return ("MOE_DEBUG=1 " if debug else "") + f"python -c {quoted}"


def label(spec: MoESpec) -> str:
    """The spec in one line, with its activation dtype."""
    return f"{spec.describe()} act={spec.act_dtype}"


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


def _check_plugin(host: Host, plugin: str) -> None:
    rec = host.registry.records.get(plugin)
    if rec is None:
        raise ConformanceError(f"no plugin named {plugin!r} is installed "
                               f"(installed: {', '.join(r.name for r in host.registry)})")
    if rec.status is not PluginStatus.OK:
        raise ConformanceError(f"plugin {plugin!r} is broken: {rec.error}")


def _check_answers(mine: list[Candidate], asked: str, call: str, debug: bool) -> list[Candidate]:
    """Every candidate of one plugin well-formed: no broken hook, every "no" coded and specific."""
    for c in mine:
        if c.status is Status.BROKEN:
            where = f"\n{c.debug}" if c.debug else (
                "" if debug else " (MOE_DEBUG=1 or --moe-conformance-debug shows the file and line)")
            raise ConformanceError(f"{c.backend} broke a hook on {asked}: {c.reason}{where}", call)
        if c.status is Status.DECLINED and c.code is Reason.UNSPECIFIED:
            raise ConformanceError(f"{c.backend} declined {asked} without a reason code "
                                   f"(Verdict.no(variant, text) is deprecated): {c.reason!r}", call)
        if c.status is Status.DECLINED and not is_specific(c.reason):
            raise ConformanceError(f"{c.backend} declined {asked} with a reason that "
                                   f"says nothing specific: {c.reason!r}", call)
    return mine


def plugin_candidates(host: Host, plugin: str, spec: MoESpec) -> list[Candidate]:
    """The plugin's runner candidates for ``spec``, after checking each is well-formed."""
    _check_plugin(host, plugin)
    # "" and (): ignore MOE_BACKEND / MOE_DISABLE, which must not change what is checked
    mine = [c for c in host.explain(spec, force="", disable=()).candidates if c.plugin == plugin]
    return _check_answers(mine, label(spec), f"plugin_candidates(host, {plugin!r}, {literal(spec)})",
                          host.debug)


def dispatch_configs(spec: MoESpec) -> list[DispatchConfig]:
    """Every dispatch the host may ask a dispatcher about for ``spec``: each layout its a2a
    mode delivers, in each wire format that loses nothing, dequantized and (for a runner
    declaring ``quantized_input``) kept quantized where that layout can carry it."""
    if spec.a2a is A2A.NONE:
        return []
    out = []
    for layout in MODE_LAYOUTS[spec.a2a]:
        for wire in lossless_wires(spec):
            kept = {quantized_delivery(layout, wire, q) for q in (False, True)} - {None}
            out += [DispatchConfig(spec.a2a, layout, wire, spec.max_tokens, k) for k in sorted(kept)]
    return out


def dispatcher_candidates(host: Host, plugin: str, spec: MoESpec,
                          dispatch: DispatchConfig) -> list[Candidate]:
    """The plugin's dispatcher candidates for ``spec`` dispatched as ``dispatch`` (what
    resolution asks once a runner takes that layout and wire), after checking each."""
    _check_plugin(host, plugin)
    trace = host._dispatchers_for(spec, dispatch, (), host.env.current())
    mine = [c for c in trace if c.plugin == plugin]
    return _check_answers(mine, f"{label(spec)}, dispatching {dispatch.describe()}",
                          f"dispatcher_candidates(host, {plugin!r}, {literal(spec)}, "
                          f"{literal(dispatch)})", host.debug)


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


def _raised(e: Exception, debug: bool) -> str:
    """``Type: message``, and where (debug mode: with the traceback)."""
    failed = HookFailed(e)
    return f"{failed} (at {failed.where})\n{failed.traceback}" if debug else str(failed)


def _mutated(before: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> list[str]:
    return [n for n, t in now.items() if not torch_equal_bits(before[n], t)]


def check_run(host: Host, backend: str, spec: MoESpec, *, tokens: int = 16, seed: int = 0) -> float:
    """Load and run ``backend`` (which said yes) on ``spec``; compare with the reference.

    :return: the relative error against the reference backend.
    :raises ConformanceError: naming the broken promise.
    """
    call = f"check_run(host, {str(backend)!r}, {literal(spec)}, tokens={tokens}, seed={seed})"
    where = f"{backend} said yes to {label(spec)}, but"
    weights = random_weights(spec, seed=seed)
    pristine = {k: v.clone() for k, v in weights.tensors().items()}
    tokens = min(tokens, spec.max_tokens)
    x, tw, ti = random_inputs(spec, tokens, seed=seed + 1)
    inputs = {"hidden states": x, "topk_weights": tw, "topk_ids": ti}
    inputs_before = {k: v.clone() for k, v in inputs.items()}
    try:
        plan = host.resolve(spec, force=backend, disable=())
        layer = host.load(plan, weights, verify=True)
        out = _run(layer, plan, x, tw, ti)
    except WeightsMutated as e:
        raise ConformanceError(f"{where} it modified the caller's {', '.join(e.names)} in "
                               "process_weights (it must leave its inputs unchanged)", call) from e
    except Exception as e:
        raise ConformanceError(f"{where} loading or running it raised "
                               f"{_raised(e, host.debug)}", call) from e
    # Mutation before numbers: a runner that zeroes a weight it was lent must be told so, not
    # that its output is off (the reference below runs on pristine copies either way).
    touched = _mutated(pristine, weights.tensors()) + _mutated(inputs_before, inputs)
    if touched:
        raise ConformanceError(f"{where} it modified the caller's {', '.join(touched)} in "
                               "make_runner or its run (runners must not mutate their inputs)", call)
    ref_layer = host.load(host.resolve(spec, force=REFERENCE, disable=()),
                          weights.replace(**{k: v.clone() for k, v in pristine.items()}))
    expected = _run(ref_layer, plan, *inputs_before.values())
    if tuple(out.shape) != tuple(expected.shape) or out.dtype != expected.dtype:
        raise ConformanceError(f"{where} it returned {tuple(out.shape)} {out.dtype}; expected "
                               f"{tuple(expected.shape)} {expected.dtype}", call)
    err = relative_error(out, expected)
    tol = tolerance(spec.quant)
    if not err <= tol:  # also catches NaN
        raise ConformanceError(f"{where} its output differs from the reference by {err:.3g} "
                               f"(relative; tolerance {tol:g} for {spec.quant.value})", call)
    if plan.dispatch.layout is Layout.STANDARD:
        _check_edges(layer, x, tw, ti, where, call)
    return err


def _check_edges(layer, x, tw, ti, where: str, call: str) -> None:
    try:
        empty = layer(x[:0], tw[:0], ti[:0])
    except Exception as e:
        raise ConformanceError(f"{where} an empty batch raised {type(e).__name__}: {e}", call) from e
    if tuple(empty.shape) != (0, x.shape[1]):
        raise ConformanceError(f"{where} an empty batch returned shape {tuple(empty.shape)}", call)
    wrong = x.float() if x.dtype != torch.float32 else x.bfloat16()
    try:
        layer(wrong, tw, ti)
    except InputError:
        pass
    except Exception as e:
        raise ConformanceError(f"{where} bad input raised {type(e).__name__} instead of a "
                               f"moe_core error: {e}", call) from e
    else:
        raise ConformanceError(f"{where} it accepted hidden states of dtype {wrong.dtype}", call)


def round_trip_skip_reason(spec: MoESpec, dispatch: DispatchConfig) -> str | None:
    """Why a dispatch cannot make a round trip on this machine, or None."""
    if spec.ep_size != round_trip.WORLD:
        return f"ep_size {spec.ep_size}: the round trip runs on a group of {round_trip.WORLD}"
    if dispatch.deliver_quantized and not dispatch.wire.dequantizable:
        return f"the {dispatch.wire.value} wire delivers tokens the reference runner cannot take"
    if spec.arch != "cpu":
        return (not_runnable_here(spec) or
                f"arch {spec.arch}: the kit's round trips run in CPU processes over gloo")
    return None


def round_trip_tolerance(spec: MoESpec, dispatch: DispatchConfig) -> float:
    """The relative error a round trip may show against one process's output."""
    tol = WIRE_TOLERANCE[dispatch.wire]
    return max(tol, tolerance(spec.quant)) if spec.quant in BATCH_SCALED else tol


def check_round_trips(factory: str, cases: Sequence[tuple[Backend | str, MoESpec, DispatchConfig]],
                      *, seed: int = 0, debug: bool = False) -> list[float]:
    """Each ``(dispatcher, spec, dispatch)`` on a two-process gloo group (one spawn for all,
    in order), under the reference runner: every rank's output must match the
    single-process reference within the wire format's tolerance.

    :param factory: ``module:function`` returning the host under test (``""``: the
        installed plugins); each process builds its own.
    :return: the largest relative error of each case over the ranks.
    """
    try:
        results = round_trip.spawn(factory, cases, seed=seed, debug=debug)
    except Exception as e:
        raise ConformanceError(f"the round trip processes failed: {type(e).__name__}: {e}") from e
    errors = []
    for (backend, spec, cfg), ranks in zip(cases, results):
        call = (f"check_round_trip({factory!r}, {str(backend)!r}, {literal(spec)}, "
                f"{literal(cfg)}, seed={seed})")
        where = (f"{backend} said yes to dispatching {label(spec)} as {cfg.describe()}, but on "
                 f"a {round_trip.WORLD}-process gloo group")
        worst = 0.0
        for rank, r in enumerate(ranks):
            if r is None:
                raise ConformanceError(f"{where} rank {rank} stopped before this case (a rank "
                                       "failed the one before, or the ranks fell out of step)", call)
            if "raised" in r:
                at = f" (at {r['where']})\n{r['traceback']}" if debug else ""
                raise ConformanceError(f"{where} rank {rank} raised {r['raised']}{at}", call)
            if "wrong" in r:
                raise ConformanceError(f"{where} rank {rank} {r['wrong']}", call)
            tol = round_trip_tolerance(spec, cfg)
            if not r["error"] <= tol:  # also catches NaN
                raise ConformanceError(f"{where} rank {rank}'s output differs from the "
                                       f"single-process reference by {r['error']:.3g} (relative; "
                                       f"tolerance {tol:g}: {cfg.wire.value} wire, {spec.quant.value} layer)", call)
            worst = max(worst, r["error"])
        errors.append(worst)
    return errors


def check_round_trip(factory: str, backend: Backend | str, spec: MoESpec, dispatch: DispatchConfig,
                     *, seed: int = 0, debug: bool = False) -> float:
    """:func:`check_round_trips` for one case (how a kit failure is reproduced)."""
    return check_round_trips(factory, [(backend, spec, dispatch)], seed=seed, debug=debug)[0]
