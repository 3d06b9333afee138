"""The host: resolve a spec to a plan once, then prepare weights and build the runner.

Resolution is ordered and explainable: every runner variant of every plugin answers;
supported ones are ranked by (variant priority, verdict preference, plugin, variant),
highest first; the first for which the host can derive a dispatch (a layout the a2a mode
delivers, a lossless wire format, a dispatcher that delivers both) becomes the plan.
Measured times (:mod:`moe_core.tuning`) may reorder the runners that would run.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

from .declare import Overlap, Reason, Variant, Verdict
from .dispatch import DispatchConfig
from .environment import Environment
from .errors import (BackendUnavailable, InputError, NoBackendError, PluginError, ResolutionError,
                     SelectorWarning, WeightsMutated, did_you_mean)
from .isolation import HookFailed, HookTimeout, debug_from_env, timeout_from_env
from .isolation import call as isolated
from .plan import Backend, Candidate, Plan, Resolution, SelectedBy, Selection, Status
from .registry import PluginStatus, Registry, _describe_exc
from .spec import A2A, MoESpec
from .tokens import MODE_LAYOUTS, QUANTIZED_LAYOUTS, Layout, Wire, lossless_wires, quantized_delivery
from .weights import MoEWeights, changed, fingerprint, validate_processed, validate_weights

ENV_FORCE = "MOE_BACKEND"
ENV_DISABLE = "MOE_DISABLE"
_STATUS_ORDER = {s: i for i, s in enumerate(Status)}
_STATIC = Selection(SelectedBy.PRIORITY, "static priority: no tuning measurements in use "
                    "(none cached for this machine, or $MOE_TUNING=0)")


def _trace_order(c: Candidate):
    """How a trace lists candidates that did not run: by status, then rank."""
    return _STATUS_ORDER[c.status], -c.priority, c.plugin, c.variant


def _selector(text: str) -> tuple[str, str | None]:
    plugin, _, variant = text.strip().partition(":")
    return plugin, (variant or None)


def _matches(sel: tuple[str, str | None], plugin: str, variant: str) -> bool:
    return sel[0] == plugin and sel[1] in (None, variant)


def _names(items: Iterable) -> str:
    return "/".join(str(i) for i in items) or "nothing"


def _check_verdicts(spec: MoESpec, declared: tuple[str, ...], answer: Any) -> dict[str, Verdict]:
    """The plugin's answer as variant -> verdict, or PluginError naming the broken rule."""
    if not isinstance(answer, (list, tuple)) or not all(isinstance(v, Verdict) for v in answer):
        raise PluginError(f"returned {type(answer).__name__}; expected a list of Verdict")
    by_name = {v.variant: v for v in answer}
    if len(by_name) != len(answer) or set(by_name) != set(declared):
        raise PluginError(f"answered for {[v.variant for v in answer]}; expected "
                          f"exactly one verdict for each of {sorted(declared)}")
    for v in answer:
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


def _missing(variant: Variant, env: Environment) -> str | None:
    return next((why for m in variant.requires if (why := env.missing(m))), None)


def _undeliverable(variant: Variant, spec: MoESpec, cfg: DispatchConfig) -> tuple[Reason, str] | None:
    """Why a dispatcher variant's declarations rule out delivering ``cfg`` for ``spec``."""
    if spec.a2a not in variant.modes:
        return Reason.MODE_UNSUPPORTED, f"serves a2a {_names(variant.modes)}; the spec asks {spec.a2a}"
    if cfg.layout not in variant.layouts:
        return (Reason.LAYOUT_UNSUPPORTED,
                f"delivers the {_names(variant.layouts)} layout; the runner takes {cfg.layout}")
    if cfg.wire not in variant.wire:
        return Reason.WIRE_UNSUPPORTED, f"moves {_names(variant.wire)}; the runner takes {cfg.wire}"
    return None


@dataclass(frozen=True)
class _Failure:
    """Why a plugin's answer is unusable, and (debug mode) where its code raised."""

    reason: str
    debug: str | None = None


class _LRU(OrderedDict):
    """A dict that forgets its least recently used entries beyond ``size``."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class _Declined(Exception):
    """The host declines a runner candidate it cannot derive a dispatch for."""

    def __init__(self, code: Reason, detail: str):
        super().__init__(detail)
        self.code = code


class Host:
    """Resolves specs against the installed plugins. One per process is typical.

    The environment (importable kernel modules, plugins' build stamps) is probed once,
    here, and frozen; :func:`moe_core.environment.assume_installed` extends it per call.

    :param measurements: orders the runners that would run by measured time (a
        :class:`moe_core.tuning.TuningCache` or anything with its ``order`` method); None:
        the tuning cache of this environment where one exists (``$MOE_TUNING=0``: never);
        False: static priorities only.
    :param hook_timeout: seconds a decision hook may run before its plugin counts as broken
        for that call (default ``$MOE_HOOK_TIMEOUT`` or 10; 0: no limit).
    :param debug: keep failing hooks' tracebacks in traces (default ``$MOE_DEBUG``).
    :param cache_size: resolutions kept (least recently used dropped); plugin answers
        are kept for four times as many keys.
    """

    def __init__(self, registry: Registry | None = None, env: Environment | None = None, *,
                 measurements: Any = None, hook_timeout: float | None = None,
                 debug: bool | None = None, cache_size: int = 4096):
        self.hook_timeout = timeout_from_env() if hook_timeout is None else hook_timeout
        if isinstance(self.hook_timeout, bool) or not isinstance(self.hook_timeout, (int, float)) \
                or not self.hook_timeout >= 0:
            raise InputError(f"hook_timeout={hook_timeout!r}: expected seconds >= 0 (0: no limit)")
        self.debug = debug_from_env() if debug is None else debug
        self.registry = registry if registry is not None else Registry.discover()
        self.env = env if env is not None else self._probe()
        self.measurements = measurements
        self._answers: _LRU = _LRU(4 * cache_size)
        self._resolutions: _LRU = _LRU(cache_size)

    def _decide(self, plugin: str, hook: str, **kwargs: Any) -> Any:
        """A decision hook of one plugin, isolated and time-limited (see :mod:`.isolation`)."""
        return isolated(lambda: self.registry.call(plugin, hook, **kwargs), self.hook_timeout)

    def _failure(self, hook: str, e: Exception) -> _Failure:
        if isinstance(e, HookFailed):
            where = f" (at {e.where})" if self.debug else ""
            return _Failure(f"{hook} failed: {e}{where}", e.traceback if self.debug else None)
        if isinstance(e, HookTimeout):
            return _Failure(f"{hook} {e}")
        return _Failure(f"{hook} failed: {_describe_exc(e)}")

    def _probe(self) -> Environment:
        facts: dict[str, str] = {}
        for rec in self.registry.ok():
            try:
                got = self._decide(rec.name, "probe_environment") or {}
                if not isinstance(got, dict) or not all(
                        isinstance(k, str) and isinstance(v, str) for k, v in got.items()):
                    raise PluginError(f"returned {got!r}; expected a mapping of str to str")
                facts.update(got)
            except Exception as e:
                self.registry.mark_broken(rec.name, self._failure("probe_environment", e).reason)
        modules = {m for rec in self.registry.ok() for v in rec.variants for m in v.requires}
        return Environment.probe(modules, facts)

    # -- resolution -----------------------------------------------------------------
    def _answers_of(self, plugin: str, hook: str, variants, env: Environment, **kwargs):
        """A plugin's verdicts (variant -> Verdict), or why its answer is unusable; cached."""
        key = (plugin, hook, env, *kwargs.values())
        found = self._answers.get(key)
        if found is None:
            try:
                answer = self._decide(plugin, hook, env=env, **kwargs)
            except Exception as e:
                answer = e
            found = self._settle(key, answer, variants, kwargs["spec"])
        return found

    def _settle(self, key, answer: Any, variants, spec: MoESpec) -> dict[str, Verdict] | _Failure:
        """Cache and return a plugin's checked verdicts, or the failure ``answer`` was or led to."""
        try:
            if isinstance(answer, Exception):
                raise answer
            found = _check_verdicts(spec, tuple(v.name for v in variants), answer)
        except Exception as e:
            found = self._failure(key[1], e)
        self._answers[key] = found
        return found

    def _prefetch(self, offers, hook: str, env: Environment, **kwargs) -> None:
        """Ask every plugin of ``offers`` not yet cached in one isolated call (one thread hop
        per spec, not one per plugin). A raise stays its plugin's; if the whole call runs
        past the limit nothing is stored, and :meth:`_answers_of` asks each plugin alone,
        which names the one that hangs."""
        todo = [((rec.name, hook, env, *kwargs.values()), variants) for rec, variants in offers
                if variants and (rec.name, hook, env, *kwargs.values()) not in self._answers]
        if len(todo) < 2 or not self.hook_timeout:
            return

        def ask(plugin: str) -> Any:
            try:  # no limit of its own: the whole batch has one
                return isolated(lambda: self.registry.call(plugin, hook, env=env, **kwargs), 0)
            except HookFailed as e:
                return e

        try:
            answers = isolated(lambda: [ask(key[0]) for key, _ in todo], self.hook_timeout)
        except HookTimeout:
            return
        for (key, variants), answer in zip(todo, answers):
            self._settle(key, answer, variants, kwargs["spec"])

    @staticmethod
    def _judge(offers, answers_of, env: Environment, disabled, force_sel=None, force=None,
               undeliverable=None):
        """Split ``(record, variants)`` offers into settled candidates and ``(candidate,
        verdict, variant)`` triples that may run, applying declarations, disable and force."""
        settled: list[Candidate] = []
        eligible: list[tuple[Candidate, Verdict, Variant]] = []
        for rec, variants in offers:
            if not variants:
                continue
            answers = answers_of(rec)
            for var in variants:
                no = dict(plugin=rec.name, variant=var.name, priority=var.priority,
                          status=Status.DECLINED)
                if isinstance(answers, _Failure):
                    settled.append(Candidate(**{**no, "status": Status.BROKEN}, reason=answers.reason,
                                             code=Reason.BROKEN, debug=answers.debug))
                    continue
                ruled_out = undeliverable(var) if undeliverable else None
                if ruled_out:
                    settled.append(Candidate(**no, code=ruled_out[0], reason=ruled_out[1]))
                    continue
                v = answers[var.name]
                if not v.supported:
                    settled.append(Candidate(**no, reason=v.reason, code=v.code))
                    continue
                missing = _missing(var, env)
                if missing:
                    settled.append(Candidate(**no, reason=missing, code=Reason.DEPENDENCY_MISSING))
                elif any(_matches(d, rec.name, var.name) for d in disabled):
                    settled.append(Candidate(**{**no, "status": Status.DISABLED},
                                             reason=f"disabled by {ENV_DISABLE}/disable= "
                                                    f"(would run: {v.reason})", code=Reason.DISABLED))
                elif force_sel and not _matches(force_sel, rec.name, var.name):
                    settled.append(Candidate(**{**no, "status": Status.NOT_FORCED},
                                             reason=f"{force!r} is forced (would run: {v.reason})",
                                             code=Reason.NOT_FORCED))
                else:
                    eligible.append((Candidate(rec.name, var.name, var.priority, Status.SUPPORTED,
                                               v.reason, v.preference), v, var))
        eligible.sort(key=lambda e: (-e[0].priority, -e[0].preference, e[0].plugin, e[0].variant))
        return settled, eligible

    def _options(self, force: str | Backend | None, disable: Iterable[str] | str | None):
        if isinstance(force, Backend):
            force = str(force)
        if force is None:
            force = os.environ.get(ENV_FORCE) or None
        if disable is None:
            disable = os.environ.get(ENV_DISABLE, "")
        if isinstance(disable, str):
            disable = [d for d in disable.split(",") if d.strip()]
        return (force.strip() if force else None), tuple(sorted(d.strip() for d in disable))

    def explain(self, spec: MoESpec, *, force: str | Backend | None = None,
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
        env = self.env.current()
        key = (spec, force, disable, env)
        cached = self._resolutions.get(key)
        if cached is None:
            cached = self._resolutions[key] = self._resolve(spec, force, disable, env)
        return cached

    def resolve(self, spec: MoESpec, *, force: str | Backend | None = None,
                disable: Iterable[str] | str | None = None) -> Plan:
        """The plan for ``spec``; raises :class:`NoBackendError` / :class:`BackendUnavailable`."""
        res = self.explain(spec, force=force, disable=disable)
        if res.plan is not None:
            return res.plan
        if res.force:
            raise BackendUnavailable(
                f"forced backend {res.force!r} cannot run {spec.describe()}:\n{res.summary()}", res)
        raise NoBackendError(f"no backend can run {spec.describe()}:\n{res.summary()}", res)

    def selector_problem(self, text: str) -> tuple[str, bool] | None:
        """What is wrong with the selector ``plugin[:variant]`` on this host (None: it names an
        installed plugin and, where that plugin loaded, one of its variants), and whether it
        looks like a typo: a variant its plugin lacks, or a name close to an installed one."""
        records = self.registry.records
        plugin, variant = _selector(text)
        rec = records.get(plugin)
        if rec is None:
            hint = did_you_mean(plugin, records)
            return (f"no plugin named {plugin!r} is installed{hint} (installed: "
                    f"{', '.join(records) or 'none'})"), bool(hint)
        names = [v.name for v in rec.variants]
        if variant and rec.status is PluginStatus.OK and variant not in names:
            return (f"plugin {plugin!r} has no variant {variant!r} (expected one of: "
                    f"{', '.join(names)}){did_you_mean(variant, names)}"), True
        return None

    def _warn_typos(self, disable: tuple[str, ...]) -> None:
        """A :class:`SelectorWarning` for each ``disable`` entry that looks like a typo."""
        for text in disable:
            problem = self.selector_problem(text)
            if problem and problem[1]:
                warnings.warn(f"disable {text!r}: {problem[0]}", SelectorWarning, stacklevel=5)

    def _resolve(self, spec: MoESpec, force: str | None, disable: tuple[str, ...],
                 env: Environment) -> Resolution:
        force_sel = _selector(force) if force else None
        disabled = [_selector(d) for d in disable]
        self._warn_typos(disable)
        if force_sel and force_sel[0] not in self.registry.records:
            known = ", ".join(r.name for r in self.registry) or "none"
            raise ResolutionError(f"forced backend {force!r}: no plugin named {force_sel[0]!r} "
                                  f"(installed: {known})", Resolution(spec, (), None, force, disable, env))
        offers = [(rec, rec.runner_variants) for rec in self.registry.ok()]
        self._prefetch(offers, "supports_shape", env, spec=spec)
        settled, eligible = self._judge(
            offers,
            lambda rec: self._answers_of(rec.name, "supports_shape", rec.runner_variants, env,
                                         spec=spec),
            env, disabled, force_sel, force)
        settled += [Candidate(rec.name, "*", 0, Status.BROKEN, rec.error or "broken", code=Reason.BROKEN)
                    for rec in self.registry if rec.status is not PluginStatus.OK]
        built: list[tuple[Candidate, Plan]] = []
        for cand, verdict, variant in eligible:
            # Every candidate is built, so "supported" below the chosen one means it would run.
            try:
                built.append((cand, self._build_plan(spec, cand, verdict, variant, disabled, env)))
            except _Declined as e:
                settled.append(dataclasses.replace(cand, status=Status.DECLINED, reason=str(e),
                                                   code=e.code))
            except Exception as e:
                failure = self._failure("configure_dispatcher", e)
                settled.append(dataclasses.replace(cand, status=Status.BROKEN, code=Reason.BROKEN,
                                                   reason=failure.reason, debug=failure.debug))
        built, selection = self._measured_order(spec, env, built)
        ranked = [dataclasses.replace(c, status=Status.CHOSEN) if i == 0 else c
                  for i, (c, _) in enumerate(built)]
        settled.sort(key=_trace_order)
        candidates = tuple(ranked + settled)
        plan = None
        if built:
            plan = dataclasses.replace(built[0][1], candidates=candidates, selection=selection)
        return Resolution(spec, candidates, plan, force, disable, env)

    def _measured_order(self, spec: MoESpec, env: Environment, built: list):
        """Built runners (all said yes; force and disable applied), reordered by measurement
        where the tuning cache has times for every one of them, with how it was decided."""
        if self.measurements is None:
            from .tuning.cache import default_cache

            self.measurements = default_cache() or False
        if not self.measurements or not built:
            return built, _STATIC
        try:
            order, selection = self.measurements.order(spec, env, self.registry, built)
            if sorted(order) != list(range(len(built))):
                raise PluginError(f"reordered {len(built)} runners as {order}; expected a permutation")
        except Exception as e:  # measurements never break resolution
            return built, Selection(SelectedBy.PRIORITY, "static priority: the measurement source "
                                    f"failed ({_describe_exc(e)})")
        return [built[i] for i in order], selection

    def _build_plan(self, spec: MoESpec, cand: Candidate, verdict: Verdict, variant: Variant,
                    disabled, env: Environment) -> Plan:
        overlap = verdict.overlap or Overlap(
            sbo=spec.sbo, down_gemm=False,
            reason="variant offers no down-GEMM overlap" if spec.down_gemm_overlap else "")
        takes = verdict.layouts or variant.layouts
        local = DispatchConfig(spec.a2a, Layout.STANDARD, Wire.BF16, spec.max_tokens)
        plan = Plan(spec, cand.plugin, cand.variant, verdict.reason,
                    verdict.padded_intermediate or spec.intermediate_per_partition, overlap,
                    local, verdict.options, graph_safe=variant.graph_safe)
        delivered = MODE_LAYOUTS[spec.a2a]
        layouts = [lay for lay in takes if lay in delivered]
        if not layouts:
            raise _Declined(Reason.LAYOUT_UNSUPPORTED,
                            f"a2a {spec.a2a} hands the runner the {_names(delivered)} layout; "
                            f"{cand.backend} takes {_names(takes)} here")
        if spec.a2a is A2A.NONE:
            return plan
        lossless = lossless_wires(spec)
        wires = [w for w in variant.wire if w in lossless]
        if not wires:
            travel = (f"travel as {_names(lossless)}" if lossless else
                      f"cannot travel ({spec.act_dtype} activations)")
            raise _Declined(Reason.WIRE_UNSUPPORTED,
                            f"{spec.quant} layers {travel}; {cand.backend} takes {_names(variant.wire)}")
        first = None
        for layout in layouts:
            for wire in wires:
                kept = quantized_delivery(layout, wire, variant.quantized_input)
                if kept is None:
                    continue  # quantized-only wires reach the contiguous / masked layouts alone
                cfg = self._configure(plan, DispatchConfig(spec.a2a, layout, wire, spec.max_tokens,
                                                           kept), layouts, wires, variant)
                trace = self._dispatchers_for(spec, cfg, disabled, env)
                chosen = next((c for c in trace if c.status is Status.CHOSEN), None)
                if chosen is not None:
                    return dataclasses.replace(plan, dispatch=cfg, dispatcher=chosen.backend,
                                               dispatchers=trace)
                first = first or (cfg, trace)
        if first is None:
            raise _Declined(Reason.WIRE_UNSUPPORTED,
                            f"{cand.backend} takes {_names(variant.wire)} only in the "
                            f"{_names(QUANTIZED_LAYOUTS)} layouts; a2a {spec.a2a} delivers "
                            f"{_names(layouts)} here")
        cfg, trace = first
        why = "; ".join(f"{c.backend}: {c.reason}" for c in trace) or "no dispatcher plugin installed"
        raise _Declined(Reason.NO_DISPATCHER, f"no dispatcher delivers {cfg.describe()} ({why})")

    def _configure(self, plan: Plan, cfg: DispatchConfig, layouts, wires,
                   variant: Variant) -> DispatchConfig:
        """The owner's ``configure_dispatcher`` on the derived ``cfg``, checked; whether the
        runner gets the wire tensors stays derived from its declaration."""
        out = self._decide(plan.plugin, "configure_dispatcher", plan=plan, dispatcher=cfg)
        if out is None:
            return cfg
        if not isinstance(out, DispatchConfig):
            raise PluginError(f"returned {type(out).__name__}; expected DispatchConfig or None")
        if out.mode is not cfg.mode:
            raise PluginError(f"changed the a2a mode to {out.mode}; the spec says {cfg.mode}")
        kept = quantized_delivery(out.layout, out.wire, variant.quantized_input)
        if out.layout not in layouts or out.wire not in wires or kept is None:
            raise PluginError(f"asked for {out.layout} {out.wire}; this variant may take "
                              f"{_names(layouts)} layouts and {_names(wires)} wire formats here")
        return dataclasses.replace(out, deliver_quantized=kept)

    def _dispatchers_for(self, spec: MoESpec, cfg: DispatchConfig, disabled,
                         env: Environment) -> tuple[Candidate, ...]:
        """The dispatcher trace for one (spec, config): chosen first, then the rest."""
        offers = [(rec, rec.dispatcher_variants) for rec in self.registry.ok()]
        self._prefetch(offers, "supports_dispatch", env, spec=spec, dispatch=cfg)
        settled, eligible = self._judge(
            offers,
            lambda rec: self._answers_of(rec.name, "supports_dispatch", rec.dispatcher_variants,
                                         env, spec=spec, dispatch=cfg),
            env, disabled, undeliverable=lambda var: _undeliverable(var, spec, cfg))
        ranked = [dataclasses.replace(c, status=Status.CHOSEN if i == 0 else Status.SUPPORTED)
                  for i, (c, _, _) in enumerate(eligible)]
        settled.sort(key=_trace_order)
        return tuple(ranked + settled)

    # -- after resolution -----------------------------------------------------------
    def process_weights(self, plan: Plan, weights: MoEWeights, *, verify: bool = False) -> MoEWeights:
        """Check canonical ``weights`` against the spec, run the owner's ``process_weights``,
        and check that it left the caller's tensors alone and returned what the plan says.

        :param verify: also compare every byte against a copy taken before (the kit and
            ``moe run`` do); by default only in-place version counters are compared.
        """
        validate_weights(plan.spec, weights)
        before = fingerprint(weights, full=verify)
        out = self.registry.call(plan.plugin, "process_weights", plan=plan, weights=weights)
        touched = changed(weights, before)
        if touched:
            raise WeightsMutated(plan.plugin, touched)
        if out is None:
            return weights
        validate_processed(plan.spec, out, plan.intermediate_padded, plan.plugin)
        return out

    def make_runner(self, plan: Plan, weights: MoEWeights, *, check_values: bool = True):
        """The owner's runner for processed ``weights``, checked against the methods the
        plan's layout needs and wrapped in an input-checking layer."""
        from .layer import MoELayer
        from .runner import missing_methods

        runner = self.registry.call(plan.plugin, "make_runner", plan=plan, weights=weights)
        missing = missing_methods(runner, plan.dispatch)
        if missing:
            raise PluginError(f"make_runner of {plan.plugin!r} returned {type(runner).__name__}, "
                              f"which lacks {', '.join(missing)} (needed for the plan's "
                              f"{plan.dispatch.layout} layout, {plan.dispatch.wire} wire)")
        return MoELayer(plan, weights, runner, check_values=check_values)

    def make_dispatcher(self, plan: Plan, group: Any = None):
        """The dispatcher owner's ``make_dispatcher`` for ``plan`` on process group ``group``."""
        from .ep import Dispatcher

        if plan.dispatcher is None:
            raise InputError(f"{plan.backend} keeps tokens on this rank (a2a "
                             f"{plan.spec.a2a.value!r}); it has no dispatcher")
        d = self.registry.call(plan.dispatcher.plugin, "make_dispatcher", plan=plan, group=group)
        if not isinstance(d, Dispatcher):
            raise PluginError(f"make_dispatcher of {plan.dispatcher.plugin!r} returned "
                              f"{type(d).__name__}; expected a dispatcher with dispatch() and combine()")
        return d

    def _plan_for(self, spec: MoESpec | Plan, force, disable) -> Plan:
        return spec if isinstance(spec, Plan) else self.resolve(spec, force=force, disable=disable)

    def load(self, spec: MoESpec | Plan, weights: MoEWeights, *, force: str | None = None,
             disable: Iterable[str] | str | None = None, check_values: bool = True,
             verify: bool = False):
        """Resolve (unless given a plan), process the weights and build this rank's layer
        (its local experts; token dispatch is :meth:`load_dispatched`). ``verify``: see
        :meth:`process_weights`."""
        plan = self._plan_for(spec, force, disable)
        return self.make_runner(plan, self.process_weights(plan, weights, verify=verify),
                                check_values=check_values)

    def load_dispatched(self, spec: MoESpec | Plan, weights: MoEWeights, group: Any = None, *,
                        force: str | None = None, disable: Iterable[str] | str | None = None,
                        check_values: bool = True):
        """:meth:`load` plus the plan's dispatcher on ``group`` (default: the world group): a
        :class:`moe_core.ep.DispatchedLayer` that every rank of the group calls together."""
        from .ep import DispatchedLayer

        plan = self._plan_for(spec, force, disable)
        dispatcher = self.make_dispatcher(plan, group)
        return DispatchedLayer(self.load(plan, weights, check_values=check_values), dispatcher)
