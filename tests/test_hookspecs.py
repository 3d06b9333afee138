"""Every hookspec is documented like pytest's hookspec.py, and every one is exercised."""

from __future__ import annotations

import inspect

import pytest

from conftest import host_with, make_dispatcher_plugin, make_plugin, one
from moe_core import A2A, DISPATCHER, Variant, Verdict, hookspecs
from moe_core.synthetic import random_inputs, random_weights

SPECS = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(f, "moe_core_spec")]


def test_the_hook_set_is_the_documented_one():
    assert {f.__name__ for f in SPECS} == {"moe_variants", "supports_shape", "configure_dispatcher",
                                            "process_weights", "make_runner", "supports_dispatch",
                                            "make_dispatcher", "probe_environment"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda f: f.__name__)
def test_hookspec_is_documented(spec):
    doc = inspect.getdoc(spec) or ""
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc, f"{spec.__name__} does not document {param}"
    assert ":return:" in doc, f"{spec.__name__} does not document its return value"
    if spec.moe_core_spec.get("firstresult"):
        assert "firstresult" in doc and "Not firstresult" not in doc, spec.__name__
    else:
        assert "Not firstresult" in doc, f"{spec.__name__} must state its firstresult semantics"


def test_every_hookspec_is_exercised_by_a_load_and_run(small_spec):
    processed = []
    plugin = make_plugin(one("k", 50), lambda s: [Verdict.yes("k")],
                         dispatcher=lambda plan, d: None,
                         process=lambda plan, w: processed.append(plan) or w.replace(layout="k"))
    built = []
    dispatcher = make_dispatcher_plugin([Variant("d", 50, kind=DISPATCHER, modes=(A2A.TORCH_A2A,))],
                                        lambda spec, cfg: [Verdict.yes("d")],
                                        lambda plan, group: built.append(plan) or _Loopback())
    host = host_with(("p", plugin), ("disp", dispatcher))
    called = []
    host.registry.pm.add_hookcall_monitoring(lambda name, impls, kw: called.append(name),
                                             lambda *a: None)
    host.registry.call("p", "moe_variants")
    host.registry.call("p", "probe_environment")  # once per host, at its creation
    layer = host.load(small_spec, random_weights(small_spec))
    assert layer.weights.layout == "k" and processed
    layer(*random_inputs(small_spec, 4))
    ep = small_spec.replace(tp_size=2, ep_size=2, a2a="torch_a2a")
    plan = host.resolve(ep)
    assert str(plan.dispatcher) == "disp:d"
    assert isinstance(host.make_dispatcher(plan), _Loopback) and built == [plan]
    assert set(called) == {f.__name__ for f in SPECS}


class _Loopback:
    def dispatch(self, x, topk_ids, topk_weights):
        raise AssertionError("not called")

    combine = dispatch
