"""The host: resolve a spec to a plan once, then prepare weights and build the runner.

Resolution is ordered and explainable: every runner variant of every plugin answers;
supported ones are ranked by (variant priority, verdict preference, plugin, variant),
highest first; the first whose ``configure_dispatcher`` succeeds becomes the plan.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

from .declare import Overlap, Verdict
from .dispatch import DispatchConfig, default_dispatch
from .errors import BackendUnavailable, InputError, NoBackendError, PluginError, ResolutionError
from .plan import (BROKEN, CHOSEN, DECLINED, DISABLED, NOT_FORCED, SUPPORTED, Candidate, Plan,
                   Resolution)
from .registry import Registry, _describe_exc
from .spec import A2A, MoESpec
from .weights import MoEWeights, validate_weights

ENV_FORCE = "MOE_BACKEND"
ENV_DISABLE = "MOE_DISABLE"
_STATUS_ORDER = {s: i for i, s in enumerate((CHOSEN, SUPPORTED, DECLINED, DISABLED, NOT_FORCED, BROKEN))}


def _trace_order(c: Candidate):
    """How a trace lists candidates that did not run: by status, then rank."""
    return _STATUS_ORDER[c.status], -c.priority, c.plugin, c.variant


def _selector(text: str) -> tuple[str, str | None]:
    plugin, _, variant = text.strip().partition(":")
    return plugin, (variant or None)


def _matches(sel: tuple[str, str | None], plugin: str, variant: str) -> bool:
    return sel[0] == plugin and sel[1] in (None, variant)


def _check_verdicts(spec: MoESpec, declared: tuple[str, ...], answer: Any) -> dict[str, Verdict]:
    """The plugin's answer as variant -> verdict, or PluginError naming the broken rule."""
    if not isinstance(answer, (list, tuple)) or not all(isinstance(v, Verdict) for v in answer):
        raise PluginError(f"supports_shape returned {type(answer).__name__}; expected a list of Verdict")
    by_name = {v.variant: v for v in answer}
    if len(by_name) != len(answer) or set(by_name) != set(declared):
        raise PluginError(f"supports_shape answered for {[v.variant for v in answer]}; expected "
                          f"exactly one verdict for each of {sorted(declared)}")
    for v in answer:
        if not isinstance(v.reason, str) or (not v.supported and not v.reason.strip()):
            raise PluginError(f"variant {v.variant!r} declined without a reason")
        pad = v.padded_intermediate
        if pad is not None and (not isinstance(pad, int) or pad < spec.intermediate_per_partition):
            raise PluginError(f"variant {v.variant!r} padded_intermediate {pad!r}; expected an int "
                              f">= {spec.intermediate_per_partition}")
        ov = v.overlap
        if ov is not None and (not isinstance(ov, Overlap) or (ov.sbo and not spec.sbo)
                               or (ov.down_gemm and not spec.down_gemm_overlap)):
            raise PluginError(f"variant {v.variant!r} overlap {ov!r} enables what the spec did not "
                              f"request (sbo={spec.sbo}, down_gemm_overlap={spec.down_gemm_overlap})")
    return by_name


class _NoDispatcher(Exception):
    """The runner candidate's dispatch config has no dispatcher: it is declined."""


class Host:
    """Resolves specs against the installed plugins. One per process is typical."""

    def __init__(self, registry: Registry | None = None):
        self.registry = registry if registry is not None else Registry.discover()
        self._answers: dict[tuple[str, MoESpec], dict[str, Verdict] | str] = {}
        self._resolutions: dict[tuple[Any, ...], Resolution] = {}

    # -- resolution -----------------------------------------------------------------
    def _answers_of(self, plugin: str, hook: str, variants, **kwargs):
        """A plugin's verdicts (variant -> Verdict), or why its answer is unusable; cached."""
        key = (plugin, hook, *kwargs.values())
        if key not in self._answers:
            spec = kwargs["spec"]
            try:
                answer = self.registry.call(plugin, hook, **kwargs)
                self._answers[key] = _check_verdicts(spec, tuple(v.name for v in variants), answer)
            except Exception as e:
                self._answers[key] = f"{hook} failed: {_describe_exc(e)}"
        return self._answers[key]

    @staticmethod
    def _judge(offers, answers_of, disabled, force_sel=None, force=None):
        """Split ``(record, variants)`` offers into settled candidates and ``(candidate,
        verdict)`` pairs that may run, applying disable/force."""
        settled: list[Candidate] = []
        eligible: list[tuple[Candidate, Verdict]] = []
        for rec, variants in offers:
            if not variants:
                continue
            answers = answers_of(rec)
            for var in variants:
                if isinstance(answers, str):
                    settled.append(Candidate(rec.name, var.name, var.priority, BROKEN, answers))
                    continue
                v = answers[var.name]
                cand = Candidate(rec.name, var.name, var.priority, DECLINED, v.reason, v.preference)
                if not v.supported:
                    settled.append(cand)
                elif any(_matches(d, rec.name, var.name) for d in disabled):
                    settled.append(dataclasses.replace(
                        cand, status=DISABLED, reason=f"disabled by {ENV_DISABLE}/disable= "
                                                      f"(would run: {v.reason})"))
                elif force_sel and not _matches(force_sel, rec.name, var.name):
                    settled.append(dataclasses.replace(
                        cand, status=NOT_FORCED, reason=f"{force!r} is forced (would run: {v.reason})"))
                else:
                    eligible.append((cand, v))
        eligible.sort(key=lambda cv: (-cv[0].priority, -cv[0].preference, cv[0].plugin, cv[0].variant))
        return settled, eligible

    def _options(self, force: str | None, disable: Iterable[str] | str | None):
        if force is None:
            force = os.environ.get(ENV_FORCE) or None
        if disable is None:
            disable = os.environ.get(ENV_DISABLE, "")
        if isinstance(disable, str):
            disable = [d for d in disable.split(",") if d.strip()]
        return (force.strip() if force else None), tuple(sorted(d.strip() for d in disable))

    def explain(self, spec: MoESpec, *, force: str | None = None,
                disable: Iterable[str] | str | None = None) -> Resolution:
        """The full resolution trace for ``spec`` (never raises for a spec that fits none).

        :param force: ``plugin`` or ``plugin:variant`` to use (None: ``$MOE_BACKEND``;
            ``""``: no force, whatever the environment says).
        :param disable: backends to forbid, same syntax (None: ``$MOE_DISABLE``, comma
            separated; an empty list: none).
        """
        if not isinstance(spec, MoESpec):
            raise TypeError(f"expected a moe_core.MoESpec, got {type(spec).__name__}")
        force, disable = self._options(force, disable)
        key = (spec, force, disable)
        cached = self._resolutions.get(key)
        if cached is None:
            cached = self._resolutions[key] = self._resolve(spec, force, disable)
        return cached

    def resolve(self, spec: MoESpec, *, force: str | None = None,
                disable: Iterable[str] | str | None = None) -> Plan:
        """The plan for ``spec``; raises :class:`NoBackendError` / :class:`BackendUnavailable`."""
        res = self.explain(spec, force=force, disable=disable)
        if res.plan is not None:
            return res.plan
        if res.force:
            raise BackendUnavailable(
                f"forced backend {res.force!r} cannot run {spec.describe()}:\n{res.summary()}", res)
        raise NoBackendError(f"no backend can run {spec.describe()}:\n{res.summary()}", res)

    def _resolve(self, spec: MoESpec, force: str | None, disable: tuple[str, ...]) -> Resolution:
        force_sel = _selector(force) if force else None
        disabled = [_selector(d) for d in disable]
        if force_sel and force_sel[0] not in self.registry.records:
            known = ", ".join(r.name for r in self.registry) or "none"
            raise ResolutionError(f"forced backend {force!r}: no plugin named {force_sel[0]!r} "
                                  f"(installed: {known})", Resolution(spec, (), None, force, disable))
        settled, eligible = self._judge(
            [(rec, rec.runner_variants) for rec in self.registry.ok()],
            lambda rec: self._answers_of(rec.name, "supports_shape", rec.runner_variants, spec=spec),
            disabled, force_sel, force)
        settled += [Candidate(rec.name, "*", 0, BROKEN, rec.error or "broken")
                    for rec in self.registry if rec.status != "ok"]
        plan = None
        ranked: list[Candidate] = []
        for cand, verdict in eligible:
            if plan is not None:
                ranked.append(dataclasses.replace(cand, status=SUPPORTED))
                continue
            try:
                plan = self._build_plan(spec, cand, verdict, disabled)
                ranked.append(dataclasses.replace(cand, status=CHOSEN))
            except _NoDispatcher as e:
                settled.append(dataclasses.replace(cand, status=DECLINED, reason=str(e)))
            except Exception as e:
                settled.append(dataclasses.replace(
                    cand, status=BROKEN, reason=f"configure_dispatcher failed: {_describe_exc(e)}"))
        settled.sort(key=_trace_order)
        candidates = tuple(ranked + settled)
        if plan is not None:
            plan = dataclasses.replace(plan, candidates=candidates)
        return Resolution(spec, candidates, plan, force, disable)

    def _build_plan(self, spec: MoESpec, cand: Candidate, verdict: Verdict, disabled) -> Plan:
        overlap = verdict.overlap or Overlap(
            sbo=spec.sbo, down_gemm=False,
            reason="variant offers no down-GEMM overlap" if spec.down_gemm_overlap else "")
        plan = Plan(spec, cand.plugin, cand.variant, verdict.reason,
                    verdict.padded_intermediate or spec.intermediate_per_partition, overlap,
                    default_dispatch(spec), verdict.options)
        cfg = self.registry.call(cand.plugin, "configure_dispatcher", plan=plan, dispatcher=plan.dispatch)
        if cfg is not None:
            if not isinstance(cfg, DispatchConfig):
                raise PluginError(f"returned {type(cfg).__name__}; expected DispatchConfig or None")
            if cfg.mode is not spec.a2a:
                raise PluginError(f"changed the a2a mode to {cfg.mode.value!r}; the spec says "
                                  f"{spec.a2a.value!r}")
            plan = dataclasses.replace(plan, dispatch=cfg)
        if spec.a2a is A2A.NONE:
            return plan
        trace = self._dispatchers_for(spec, plan.dispatch, disabled)
        chosen = next((c for c in trace if c.status == CHOSEN), None)
        if chosen is None:
            why = "; ".join(f"{c.backend}: {c.reason}" for c in trace) or "no dispatcher plugin installed"
            raise _NoDispatcher(f"no dispatcher delivers {plan.dispatch.describe()} ({why})")
        return dataclasses.replace(plan, dispatcher=chosen.backend, dispatchers=trace)

    def _dispatchers_for(self, spec: MoESpec, cfg: DispatchConfig, disabled) -> tuple[Candidate, ...]:
        """The dispatcher trace for one (spec, config): chosen first, then the rest."""
        settled, eligible = self._judge(
            [(rec, rec.dispatcher_variants) for rec in self.registry.ok()],
            lambda rec: self._answers_of(rec.name, "supports_dispatch", rec.dispatcher_variants,
                                         spec=spec, dispatch=cfg),
            disabled)
        ranked = [dataclasses.replace(c, status=CHOSEN if i == 0 else SUPPORTED)
                  for i, (c, _) in enumerate(eligible)]
        settled.sort(key=_trace_order)
        return tuple(ranked + settled)

    # -- after resolution -----------------------------------------------------------
    def process_weights(self, plan: Plan, weights: MoEWeights) -> MoEWeights:
        """Check canonical ``weights`` against the spec, then the owner's ``process_weights``."""
        validate_weights(plan.spec, weights)
        out = self.registry.call(plan.plugin, "process_weights", plan=plan, weights=weights)
        if out is None:
            return weights
        if not isinstance(out, MoEWeights):
            raise PluginError(f"process_weights of {plan.plugin!r} returned {type(out).__name__}; "
                              "expected MoEWeights or None")
        return out

    def make_runner(self, plan: Plan, weights: MoEWeights, *, check_values: bool = True):
        """The owner's runner for processed ``weights``, wrapped in an input-checking layer."""
        from .layer import MoELayer

        runner = self.registry.call(plan.plugin, "make_runner", plan=plan, weights=weights)
        if runner is None or not callable(runner):
            raise PluginError(f"make_runner of {plan.plugin!r} returned {runner!r}; expected a runner")
        return MoELayer(plan, weights, runner, check_values=check_values)

    def make_dispatcher(self, plan: Plan, group: Any = None):
        """The dispatcher owner's ``make_dispatcher`` for ``plan`` on process group ``group``."""
        if plan.dispatcher is None:
            raise InputError(f"{plan.backend} keeps tokens on this rank (a2a "
                             f"{plan.spec.a2a.value!r}); it has no dispatcher")
        d = self.registry.call(plan.dispatcher_plugin, "make_dispatcher", plan=plan, group=group)
        if not all(callable(getattr(d, m, None)) for m in ("dispatch", "combine")):
            raise PluginError(f"make_dispatcher of {plan.dispatcher_plugin!r} returned {d!r}; expected "
                              "a dispatcher with dispatch() and combine()")
        return d

    def _plan_for(self, spec: MoESpec | Plan, force, disable) -> Plan:
        return spec if isinstance(spec, Plan) else self.resolve(spec, force=force, disable=disable)

    def load(self, spec: MoESpec | Plan, weights: MoEWeights, *, force: str | None = None,
             disable: Iterable[str] | str | None = None, check_values: bool = True):
        """Resolve (unless given a plan), process the weights and build this rank's layer
        (its local experts; token dispatch is :meth:`load_dispatched`)."""
        plan = self._plan_for(spec, force, disable)
        return self.make_runner(plan, self.process_weights(plan, weights), check_values=check_values)

    def load_dispatched(self, spec: MoESpec | Plan, weights: MoEWeights, group: Any = None, *,
                        force: str | None = None, disable: Iterable[str] | str | None = None,
                        check_values: bool = True):
        """:meth:`load` plus the plan's dispatcher on ``group`` (default: the world group): a
        :class:`moe_core.ep.DispatchedLayer` that every rank of the group calls together."""
        from .ep import DispatchedLayer

        plan = self._plan_for(spec, force, disable)
        dispatcher = self.make_dispatcher(plan, group)
        return DispatchedLayer(self.load(plan, weights, check_values=check_values), dispatcher)
