"""Dispatchers are resolved like runners: declared, ranked, explained, and a runner whose
dispatch no dispatcher can deliver is declined so resolution moves on. The host alone
derives each plan's layout and wire format from the declarations."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import host_with, make_dispatcher_plugin, make_plugin, one
from moe_core import (A2A, DISPATCHER, Layout, MoESpec, NoBackendError, Reason, Status, Variant,
                      Verdict, Wire)
from moe_core.errors import InputError
from moe_core.registry import PluginStatus

BROKEN, CHOSEN, DECLINED, DISABLED, SUPPORTED = (Status.BROKEN, Status.CHOSEN, Status.DECLINED,
                                                 Status.DISABLED, Status.SUPPORTED)

EP = MoESpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=96, tp_size=2, ep_size=2,
             a2a="torch_a2a")


def _dispatcher(name="d", priority=30, answer=None, **declared):
    declared.setdefault("modes", tuple(a for a in A2A if a is not A2A.NONE))
    return make_dispatcher_plugin([Variant(name, priority, kind=DISPATCHER, **declared)],
                                  answer or (lambda spec, cfg: [Verdict.yes(name, "fake")]))


def _runner(priority=50, **declared):
    """A runner plugin whose one variant ``k`` declares ``layouts``/``wire``."""
    return make_plugin([Variant("k", priority, **declared)], lambda s: [Verdict.yes("k")])


def _cand(res, backend):
    return next(c for c in res.candidates if str(c.backend) == backend)


def test_tokens_that_stay_local_get_no_dispatcher():
    plan = host_with().resolve(EP.replace(a2a="none"))
    assert plan.dispatcher is None and plan.dispatchers == ()


def test_the_torch_dispatcher_serves_every_mode_on_a_machine_without_deepep():
    for a2a in ("torch_a2a", "deepep_normal", "deepep_ll"):
        plan = host_with().resolve(EP.replace(a2a=a2a))
        assert str(plan.dispatcher) == "torch:all_to_all"
        assert plan.dispatchers[0].status == CHOSEN


def test_dispatchers_rank_by_priority_and_the_rest_stay_in_the_trace():
    plan = host_with(("fast", _dispatcher())).resolve(EP)
    assert str(plan.dispatcher) == "fast:d"
    assert [(str(c.backend), c.status) for c in plan.dispatchers] == [
        ("fast:d", CHOSEN), ("torch:all_to_all", SUPPORTED)]
    assert plan.to_dict()["dispatcher"] == {"plugin": "fast", "variant": "d"}


def test_a_runner_whose_dispatch_no_dispatcher_delivers_falls_through_with_reasons():
    spec = EP.replace(quant="nvfp4", static_input_scale=True)
    host = host_with(("nv", _runner(layouts=(Layout.MASKED,), wire=(Wire.NVFP4,),
                                    quantized_input=True)))
    res = host.explain(spec)
    assert str(res.plan.backend).startswith("reference:")
    k = _cand(res, "nv:k")
    assert k.status == DECLINED and k.code is Reason.NO_DISPATCHER
    assert "no dispatcher delivers torch_a2a masked nvfp4" in k.reason
    torch_no = next(c for c in host._dispatchers_for(spec, res.plan.dispatch.__class__(
        spec.a2a, Layout.MASKED, Wire.NVFP4, spec.max_tokens, True), [], host.env)
        if c.plugin == "torch")
    assert torch_no.code is Reason.WIRE_UNSUPPORTED


def test_an_nvfp4_wire_config_that_would_dequantize_is_refused():
    """NVFP4 cannot be dequantized on arrival: quantized_delivery decides delivery, and a
    config saying otherwise is an error, not silently flipped."""
    from moe_core.dispatch import DispatchConfig

    with pytest.raises(ValueError, match="nvfp4 wire cannot be dequantized"):
        DispatchConfig(EP.a2a, Layout.MASKED, Wire.NVFP4, 64)
    assert DispatchConfig(EP.a2a, Layout.MASKED, Wire.NVFP4, 64, True).deliver_quantized


@pytest.mark.parametrize("a2a, layout", [("torch_a2a", Layout.STANDARD),
                                         ("deepep_normal", Layout.STANDARD)])
def test_a_runner_that_routes_itself_gets_the_standard_layout_from_a_dispatcher(a2a, layout):
    plan = host_with(("fused", _runner(layouts=(Layout.STANDARD,)))).resolve(EP.replace(a2a=a2a))
    assert plan.plugin == "fused" and plan.dispatch.layout is layout


def test_a_layout_the_mode_does_not_deliver_is_declined_by_the_host():
    res = host_with(("fused", _runner(layouts=(Layout.STANDARD,)))).explain(EP.replace(a2a="deepep_ll"))
    k = _cand(res, "fused:k")
    assert k.status == DECLINED and k.code is Reason.LAYOUT_UNSUPPORTED
    assert "a2a deepep_ll hands the runner the masked layout" in k.reason
    local = host_with(("masked", _runner(layouts=(Layout.MASKED,)))).explain(EP.replace(a2a="none"))
    assert _cand(local, "masked:k").code is Reason.LAYOUT_UNSUPPORTED


@pytest.mark.parametrize("a2a", ["torch_a2a", "deepep_normal", "deepep_ll"])
@pytest.mark.parametrize("quant, wire", [("bf16", Wire.BF16), ("fp8_block128", Wire.FP8),
                                         ("fp8_channel", Wire.BF16), ("nvfp4", Wire.BF16)])
def test_the_wire_is_the_first_lossless_format_the_runner_takes(a2a, quant, wire):
    spec = EP.replace(a2a=a2a, quant=quant, hidden_size=256, intermediate_size=256)
    fp8_runner = _runner(wire=(Wire.FP8, Wire.BF16))
    assert host_with(("r", fp8_runner)).resolve(spec).dispatch.wire is wire
    # a runner that takes bf16 only (the reference) gets bf16, whatever the mode
    assert host_with().resolve(spec, force="reference:loop").dispatch.wire is Wire.BF16


def test_configure_dispatcher_may_choose_among_what_is_declared_and_nothing_else():
    spec = EP.replace(quant="fp8_block128", hidden_size=256, intermediate_size=256)
    to_bf16 = make_plugin([Variant("k", 50, wire=(Wire.FP8, Wire.BF16))], lambda s: [Verdict.yes("k")],
                          dispatcher=lambda plan, d: dataclasses.replace(d, wire=Wire.BF16))
    assert host_with(("a", to_bf16)).resolve(spec).dispatch.wire is Wire.BF16
    for change in (dict(wire=Wire.NVFP4), dict(layout=Layout.STANDARD), dict(mode=A2A.DEEPEP_LL)):
        bad = make_plugin([Variant("k", 50, layouts=(Layout.CONTIGUOUS,), wire=(Wire.FP8,))],
                          lambda s: [Verdict.yes("k")],
                          dispatcher=lambda plan, d, c=change: dataclasses.replace(d, **c))
        res = host_with(("a", bad)).explain(spec)
        assert _cand(res, "a:k").code is Reason.BROKEN and res.plan.plugin == "reference"


def test_dispatcher_declarations_are_checked_by_the_host_before_it_asks():
    asked = []
    only_ll = _dispatcher(answer=lambda spec, cfg: asked.append(cfg) or [Verdict.yes("d", "fake")],
                          modes=(A2A.DEEPEP_LL,), layouts=(Layout.MASKED,))
    plan = host_with(("ll", only_ll)).resolve(EP)  # torch_a2a: not this dispatcher's mode
    d = next(c for c in plan.dispatchers if c.plugin == "ll")
    assert d.code is Reason.MODE_UNSUPPORTED and str(plan.dispatcher) == "torch:all_to_all"


def test_disabling_the_only_dispatcher_leaves_no_backend_and_says_why():
    with pytest.raises(NoBackendError, match="no dispatcher delivers") as e:
        host_with().resolve(EP, disable=["torch"])
    trace = e.value.resolution.candidates
    assert all(c.status != CHOSEN for c in trace)
    assert not host_with().explain(EP.replace(a2a="none"), disable=["torch"]).plan.dispatcher


def test_disable_names_a_dispatcher_variant():
    plan = host_with(("fast", _dispatcher())).resolve(EP, disable=["fast:d"])
    assert str(plan.dispatcher) == "torch:all_to_all"
    assert next(c for c in plan.dispatchers if c.plugin == "fast").status == DISABLED


def test_a_raising_dispatcher_plugin_is_broken_and_the_others_carry_on():
    def boom(spec, cfg):
        raise RuntimeError("bad dispatcher")
    plan = host_with(("bad", _dispatcher(answer=boom))).resolve(EP)
    assert str(plan.dispatcher) == "torch:all_to_all"
    bad = next(c for c in plan.dispatchers if c.plugin == "bad")
    assert bad.status == BROKEN and "RuntimeError: bad dispatcher" in bad.reason


def test_a_plugin_declaring_dispatchers_without_their_hooks_is_broken():
    class Half:
        from moe_core import hookimpl

        @hookimpl
        def moe_variants(self):
            return [Variant("d", 1, kind=DISPATCHER, modes=(A2A.TORCH_A2A,))]

    host = host_with(("half", Half()))
    rec = host.registry.records["half"]
    assert rec.status is PluginStatus.BROKEN
    assert "declares dispatcher variants but implements no supports_dispatch" in rec.error


def test_an_unknown_variant_kind_or_a_dispatcher_serving_no_mode_cannot_be_declared():
    with pytest.raises(ValueError, match="'router' is not a valid VariantKind"):
        Variant("k", 1, kind="router")
    with pytest.raises(ValueError, match="declares no a2a modes"):
        Variant("d", 1, kind=DISPATCHER)


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
    assert _cand(res, "reference:loop").code is Reason.NO_DISPATCHER
