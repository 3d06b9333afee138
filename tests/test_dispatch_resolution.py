"""Dispatchers are resolved like runners: declared, ranked, explained, and a runner whose
dispatch config no dispatcher can deliver is declined so resolution moves on."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import host_with, make_dispatcher_plugin, make_plugin, one
from moe_core import DISPATCHER, MoESpec, NoBackendError, Variant, Verdict
from moe_core.errors import InputError
from moe_core.plan import BROKEN, CHOSEN, DECLINED, DISABLED, SUPPORTED
from moe_core.registry import BROKEN as RECORD_BROKEN

EP = MoESpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=96, tp_size=2, ep_size=2,
             a2a="torch_a2a")


def _dispatcher(name="d", priority=30, answer=None):
    return make_dispatcher_plugin([Variant(name, priority, kind=DISPATCHER)],
                                  answer or (lambda spec, cfg: [Verdict.yes(name, "fake")]))


def _asks(dtype):
    """A runner plugin that asks the dispatcher for ``dtype`` on the wire."""
    return make_plugin(one("k", 50), lambda s: [Verdict.yes("k")],
                       dispatcher=lambda plan, d: dataclasses.replace(d, dtype=dtype))


def test_tokens_that_stay_local_get_no_dispatcher():
    plan = host_with().resolve(EP.replace(a2a="none"))
    assert plan.dispatcher is None and plan.dispatchers == ()


def test_the_torch_dispatcher_serves_every_mode_on_a_machine_without_deepep():
    for a2a in ("torch_a2a", "deepep_normal", "deepep_ll"):
        plan = host_with().resolve(EP.replace(a2a=a2a))
        assert plan.dispatcher == "torch:all_to_all"
        assert plan.dispatchers[0].status == CHOSEN


def test_dispatchers_rank_by_priority_and_the_rest_stay_in_the_trace():
    plan = host_with(("fast", _dispatcher())).resolve(EP)
    assert plan.dispatcher == "fast:d"
    assert [(c.backend, c.status) for c in plan.dispatchers] == [
        ("fast:d", CHOSEN), ("torch:all_to_all", SUPPORTED)]
    assert plan.to_dict()["dispatcher"] == "fast:d"


def test_a_runner_whose_dispatch_no_dispatcher_delivers_falls_through_with_reasons():
    host = host_with(("nv", _asks("nvfp4")))
    res = host.explain(EP)
    assert res.plan.backend.startswith("reference:")
    k = next(c for c in res.candidates if c.backend == "nv:k")
    assert k.status == DECLINED
    assert "no dispatcher delivers torch_a2a contiguous nvfp4" in k.reason
    assert "torch:all_to_all: moves bf16/fp8 tokens; the runner asked for nvfp4" in k.reason


def test_disabling_the_only_dispatcher_leaves_no_backend_and_says_why():
    with pytest.raises(NoBackendError, match="no dispatcher delivers") as e:
        host_with().resolve(EP, disable=["torch"])
    trace = e.value.resolution.candidates
    assert all(c.status != CHOSEN for c in trace)
    assert not host_with().explain(EP.replace(a2a="none"), disable=["torch"]).plan.dispatcher


def test_disable_names_a_dispatcher_variant():
    plan = host_with(("fast", _dispatcher())).resolve(EP, disable=["fast:d"])
    assert plan.dispatcher == "torch:all_to_all"
    assert next(c for c in plan.dispatchers if c.plugin == "fast").status == DISABLED


def test_a_raising_dispatcher_plugin_is_broken_and_the_others_carry_on():
    def boom(spec, cfg):
        raise RuntimeError("bad dispatcher")
    plan = host_with(("bad", _dispatcher(answer=boom))).resolve(EP)
    assert plan.dispatcher == "torch:all_to_all"
    bad = next(c for c in plan.dispatchers if c.plugin == "bad")
    assert bad.status == BROKEN and "RuntimeError: bad dispatcher" in bad.reason


def test_a_plugin_declaring_dispatchers_without_their_hooks_is_broken():
    class Half:
        from moe_core import hookimpl

        @hookimpl
        def moe_variants(self):
            return [Variant("d", 1, kind=DISPATCHER)]

    host = host_with(("half", Half()))
    rec = host.registry.records["half"]
    assert rec.status == RECORD_BROKEN
    assert "declares dispatcher variants but implements no supports_dispatch" in rec.error


def test_an_unknown_variant_kind_is_broken():
    plugin = make_plugin([Variant("k", 1, kind="router")], lambda s: [])
    rec = host_with(("odd", plugin)).registry.records["odd"]
    assert rec.status == RECORD_BROKEN and "kind 'router'" in rec.error


def test_a_plan_without_a_dispatcher_cannot_build_one():
    host = host_with()
    with pytest.raises(InputError, match="keeps tokens on this rank"):
        host.make_dispatcher(host.resolve(EP.replace(a2a="none")))


def test_load_dispatched_needs_an_initialized_group():
    from moe_core.synthetic import random_weights

    host = host_with()
    plan = host.resolve(EP)
    with pytest.raises(InputError, match="torch.distributed is not initialized"):
        host.load_dispatched(plan, random_weights(EP))


def test_torch_dispatcher_declines_expert_tp_inside_ep():
    spec = EP.replace(tp_size=4, ep_size=2)
    res = host_with().explain(spec)
    assert res.plan is None
    assert "needs ep_size == tp_size" in res.summary()
