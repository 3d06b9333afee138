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
from .errors import BackendUnavailable, NoBackendError, PluginError, ResolutionError
from .plan import (BROKEN, CHOSEN, DECLINED, DISABLED, NOT_FORCED, SUPPORTED, Candidate, Plan,
                   Resolution)
from .registry import Registry, _describe_exc
from .spec import MoESpec
from .weights import MoEWeights, validate_weights

ENV_FORCE = "MOE_BACKEND"
ENV_DISABLE = "MOE_DISABLE"
_STATUS_ORDER = {s: i for i, s in enumerate((CHOSEN, SUPPORTED, DECLINED, DISABLED, NOT_FORCED, BROKEN))}


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


class Host:
    """Resolves specs against the installed plugins. One per process is typical."""

    def __init__(self, registry: Registry | None = None):
        self.registry = registry if registry is not None else Registry.discover()
        self._answers: dict[tuple[str, MoESpec], dict[str, Verdict] | str] = {}
        self._resolutions: dict[tuple[Any, ...], Resolution] = {}

    # -- resolution -----------------------------------------------------------------
    def _answers_of(self, plugin: str, declared: tuple[str, ...], spec: MoESpec):
        key = (plugin, spec)
        if key not in self._answers:
            try:
                answer = self.registry.call(plugin, "supports_shape", spec=spec)
                self._answers[key] = _check_verdicts(spec, declared, answer)
            except Exception as e:
                self._answers[key] = f"supports_shape failed: {_describe_exc(e)}"
        return self._answers[key]

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
        settled: list[Candidate] = []
        eligible: list[tuple[Candidate, Verdict]] = []
        for rec in self.registry:
            if rec.status != "ok":
                settled.append(Candidate(rec.name, "*", 0, BROKEN, rec.error or "broken"))
                continue
            variants = rec.runner_variants
            if not variants:
                continue
            answers = self._answers_of(rec.name, tuple(v.name for v in variants), spec)
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
        plan = None
        ranked: list[Candidate] = []
        for cand, verdict in eligible:
            if plan is not None:
                ranked.append(dataclasses.replace(cand, status=SUPPORTED))
                continue
            try:
                plan = self._build_plan(spec, cand, verdict)
                ranked.append(dataclasses.replace(cand, status=CHOSEN))
            except Exception as e:
                settled.append(dataclasses.replace(
                    cand, status=BROKEN, reason=f"configure_dispatcher failed: {_describe_exc(e)}"))
        settled.sort(key=lambda c: (_STATUS_ORDER[c.status], -c.priority, c.plugin, c.variant))
        candidates = tuple(ranked + settled)
        if plan is not None:
            plan = dataclasses.replace(plan, candidates=candidates)
        return Resolution(spec, candidates, plan, force, disable)

    def _build_plan(self, spec: MoESpec, cand: Candidate, verdict: Verdict) -> Plan:
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
        return plan

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

    def load(self, spec: MoESpec | Plan, weights: MoEWeights, *, force: str | None = None,
             disable: Iterable[str] | str | None = None, check_values: bool = True):
        """Resolve (unless given a plan), process the weights and build the layer."""
        plan = spec if isinstance(spec, Plan) else self.resolve(spec, force=force, disable=disable)
        return self.make_runner(plan, self.process_weights(plan, weights), check_values=check_values)
