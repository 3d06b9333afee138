"""Hostile or broken plugins cannot stall, end, mislead or silently corrupt resolution and
loading: each kind below is isolated, and the others' answers stand."""

from __future__ import annotations

import time
from importlib.metadata import EntryPoint

import pytest
import torch

from conftest import host_with, make_plugin, one
from moe_core import Host, Reason, Status, Variant, Verdict, hookimpl
from moe_core.errors import PluginError, WeightsMutated
from moe_core.reference.experts import ReferenceRunner
from moe_core.registry import PluginStatus, Registry
from moe_core.synthetic import random_inputs, random_weights


def _cand(res, plugin):
    return next(c for c in res.candidates if c.plugin == plugin)


def _hostile(answer):
    """A plugin whose supports_shape is ``answer(spec)``, next to a good one."""
    return host_with(("bad", make_plugin(one("k", 99), answer)),
                     ("good", make_plugin(one("g", 50), lambda s: [Verdict.yes("g", "fine")])))


def test_a_hook_that_hangs_times_out_and_resolution_goes_on(small_spec):
    host = host_with(("slow", make_plugin(one("k", 99), lambda s: time.sleep(30))),
                     ("good", make_plugin(one("g", 50), lambda s: [Verdict.yes("g", "fine")])))
    host.hook_timeout = 0.3
    t0 = time.perf_counter()
    res = host.explain(small_spec)
    assert time.perf_counter() - t0 < 5
    assert res.plan.plugin == "good"
    slow = _cand(res, "slow")
    assert slow.status is Status.BROKEN and "supports_shape timed out after 0.3 s" in slow.reason
    assert host.explain(small_spec.replace(max_tokens=8)).plan.plugin == "good"  # a fresh worker


@pytest.mark.parametrize("raise_, name", [(SystemExit(3), "SystemExit: 3"),
                                          (GeneratorExit(), "GeneratorExit"),
                                          (MemoryError("no"), "MemoryError: no")])
def test_every_exception_but_keyboard_interrupt_is_contained(small_spec, raise_, name):
    def answer(spec):
        raise raise_
    res = _hostile(answer).explain(small_spec)
    assert res.plan.plugin == "good" and name in _cand(res, "bad").reason


def test_keyboard_interrupt_still_stops_the_user(small_spec):
    def answer(spec):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _hostile(answer).explain(small_spec)


def test_debug_mode_keeps_the_hooks_file_line_and_traceback(small_spec):
    def answer(spec):
        raise RuntimeError("deep inside the plugin")
    host = _hostile(answer)
    host.debug = True
    bad = _cand(host.explain(small_spec), "bad")
    assert f"{__file__}:" in bad.reason and "deep inside the plugin" in bad.debug
    assert "Traceback" in bad.to_dict()["traceback"]
    quiet = _cand(_hostile(answer).explain(small_spec), "bad")
    assert quiet.debug is None and __file__ not in quiet.reason


def test_bad_verdict_values_are_the_plugins_fault_not_a_crash(small_spec):
    for answer in (lambda s: [Verdict.yes("k", preference="high")],
                   lambda s: [Verdict("k", 1, "truthy")],
                   lambda s: [Verdict.yes("k", preference=float("nan"))]):
        res = _hostile(answer).explain(small_spec)
        assert res.plan.plugin == "good" and _cand(res, "bad").code is Reason.BROKEN


def test_a_reserved_name_in_another_distribution_is_the_broken_one(monkeypatch, small_spec):
    eps = [EntryPoint("reference", "conftest", "moe_core.plugins"),
           EntryPoint("reference", "moe_core.reference.plugin", "moe_core.plugins"),
           EntryPoint("torch", "moe_core.torch_dispatch.plugin", "moe_core.plugins")]
    monkeypatch.setattr("moe_core.registry.entry_points", lambda group: eps)
    reg = Registry.discover()
    assert reg.records["reference"].status is PluginStatus.OK
    assert reg.records["reference"].source == "moe_core.reference.plugin"
    impostor = next(r for n, r in reg.records.items() if n.startswith("reference@"))
    assert impostor.status is PluginStatus.BROKEN and "reserved for moe-core's built-in" in impostor.error
    assert str(Host(reg).resolve(small_spec, force="reference").backend).startswith("reference:")


class _Processing:
    def __init__(self, process=None, runner=None):
        self._process, self._runner = process, runner

    @hookimpl
    def moe_variants(self):
        return [Variant("k", 99)]

    @hookimpl
    def supports_shape(self, spec):
        return [Verdict.yes("k", "claims everything")]

    @hookimpl
    def process_weights(self, plan, weights):
        return self._process(plan, weights) if self._process else None

    @hookimpl
    def make_runner(self, plan, weights):
        return (self._runner or ReferenceRunner)(plan, weights)


def _load(plugin, spec, **kw):
    host = host_with(("p", plugin))
    return host.load(spec, random_weights(spec), **kw)


def test_in_place_mutation_of_the_callers_weights_is_caught(small_spec):
    def zero(plan, w):
        w.w13.zero_()
        return w
    with pytest.raises(WeightsMutated, match="modified the caller's w13"):
        _load(_Processing(zero), small_spec)

    def sneaky(plan, w):  # through .data: no version bump, only the full check sees it
        w.w2.data.mul_(0)
        return None
    with pytest.raises(WeightsMutated, match="w2"):
        _load(_Processing(sneaky), small_spec, verify=True)


@pytest.mark.parametrize("process, message", [
    (lambda plan, w: w.replace(w13=w.w13[:, :-2]), "made w13"),
    (lambda plan, w: w.replace(w2=None), "dropped w2"),
    (lambda plan, w: "weights", "expected MoEWeights"),
])
def test_processed_weights_are_checked_against_the_plan(small_spec, process, message):
    with pytest.raises(PluginError, match=message):
        _load(_Processing(lambda plan, w: process(plan, w.replace(**{
            n: t.clone() for n, t in w.tensors().items()}))), small_spec)


def test_padded_processed_weights_must_have_the_planned_padding(small_spec):
    class Pads(_Processing):
        @hookimpl
        def supports_shape(self, spec):
            return [Verdict.yes("k", "pads to 128", padded_intermediate=128)]

    unpadded = Pads(lambda plan, w: w.replace(w13=w.w13.clone(), w2=w.w2.clone()))
    with pytest.raises(PluginError, match="padded intermediate 128"):
        _load(unpadded, small_spec)


@pytest.mark.parametrize("wrong, message", [
    (lambda out: out[:-1], "returned"),
    (lambda out: out.float(), "float32"),
    (lambda out: out.tolist(), "a list"),
])
def test_a_runners_wrong_output_is_caught_on_its_first_call(small_spec, wrong, message):
    class Wrong(ReferenceRunner):
        def __call__(self, x, tw, ti):
            return wrong(super().__call__(x, tw, ti))

    layer = _load(_Processing(runner=Wrong), small_spec)
    with pytest.raises(PluginError, match=message):
        layer(*random_inputs(small_spec, 4))


def test_a_runner_missing_a_planned_layouts_method_is_refused_at_load(small_spec):
    spec = small_spec.replace(a2a="torch_a2a", tp_size=2, ep_size=2)

    class StandardOnly:
        def __init__(self, plan, weights):
            self.ref = ReferenceRunner(plan, weights)

        def __call__(self, x, tw, ti):
            return self.ref(x, tw, ti)

    host = host_with(("p", _Processing(runner=StandardOnly)))
    plan = host.resolve(spec)
    assert plan.dispatch.layout.value == "contiguous"
    with pytest.raises(PluginError, match="lacks run_contiguous"):
        host.load(plan, random_weights(spec).experts(spec.first_expert, spec.local_experts))


def test_caches_are_bounded(small_spec):
    host = Host(Registry.builtin(), cache_size=8)
    for tokens in range(1, 40):
        host.explain(small_spec.replace(max_tokens=tokens))
    assert len(host._resolutions) == 8 and len(host._answers) <= 32
    assert host.explain(small_spec.replace(max_tokens=39)).plan is not None


def test_a_probe_that_fails_breaks_only_its_plugin(small_spec):
    class BadProbe(_Processing):
        @hookimpl
        def probe_environment(self):
            return {"p.x": 1}  # not a str

    reg = Registry.builtin()
    reg.register(BadProbe(), "p")
    host = Host(reg)
    assert reg.records["p"].status is PluginStatus.BROKEN
    assert "expected a mapping of str to str" in reg.records["p"].error
    assert host.resolve(small_spec).plugin == "reference"


def test_the_kit_reports_mutation_as_mutation(small_spec):
    from moe_core.conformance.checks import ConformanceError, check_run

    def zero(plan, w):
        w.w13.zero_()
        return None
    host = host_with(("p", _Processing(zero)))
    with pytest.raises(ConformanceError, match="it modified the caller's w13 in process_weights"):
        check_run(host, "p:k", small_spec)
    assert torch.isfinite(random_weights(small_spec).w13.float()).all()
