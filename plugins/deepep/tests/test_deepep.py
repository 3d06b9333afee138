"""DeepEP's declared constraints, and its call arguments as data (S3, S4), on CPU.

``deep_ep`` is never importable here; tests that need the plugin to say "yes" pretend it
is (the check is one function), and nothing here builds a DeepEP buffer.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import moe_plugin_deepep as plugin
from moe_core import A2A, Host, MoESpec
from moe_core.dispatch import DispatchConfig
from moe_core.errors import InputError
from moe_core.registry import Registry
from moe_plugin_deepep import constraints
from moe_plugin_deepep.args import low_latency_kwargs

SPEC = MoESpec(num_experts=64, top_k=8, hidden_size=7168, intermediate_size=2048, tp_size=8,
               ep_size=8, a2a="deepep_ll", arch="sm90", max_tokens=128)


@pytest.fixture
def deep_ep_present(monkeypatch):
    monkeypatch.setattr(constraints, "missing_module", lambda name: None)


def host():
    reg = Registry.builtin()
    reg.register(plugin, "deepep")
    return Host(reg)


def cfg(spec=SPEC, **kw):
    base = dict(mode=spec.a2a, layout="masked" if spec.a2a is A2A.DEEPEP_LL else "contiguous",
                dtype="bf16", max_tokens_per_rank=spec.max_tokens)
    return DispatchConfig(**{**base, **kw})


def verdicts(spec, dispatch):
    return {v.variant: v for v in plugin.supports_dispatch(spec=spec, dispatch=dispatch)}


def test_without_deep_ep_both_variants_say_so_and_torch_takes_over():
    v = verdicts(SPEC, cfg())
    assert not v["low_latency"].supported and "deep_ep" in v["low_latency"].reason
    plan = host().resolve(SPEC)
    assert plan.dispatcher == "torch:all_to_all"
    assert any(c.backend == "deepep:low_latency" and "deep_ep" in c.reason for c in plan.dispatchers)


def test_low_latency_serves_the_masked_decode_path(deep_ep_present):
    v = verdicts(SPEC, cfg())
    assert v["low_latency"].supported and not v["normal"].supported
    assert "serves a2a 'deepep_normal'" in v["normal"].reason
    assert host().resolve(SPEC).dispatcher == "deepep:low_latency"


@pytest.mark.parametrize("change, expect", [
    (dict(hidden_size=3000), "hidden 3000 is not one of the low-latency kernels' sizes"),
    (dict(max_tokens=2048), "max dispatch tokens per rank 2048 > 1024"),
    (dict(arch="cpu"), "needs an NVIDIA GPU"),
    (dict(tp_size=16), "split by EP alone"),
])
def test_low_latency_limits_are_declared(deep_ep_present, change, expect):
    spec = SPEC.replace(**change)
    v = verdicts(spec, cfg(spec))["low_latency"]
    assert not v.supported and expect in v.reason
    # ... and the layer still resolves, through the torch dispatcher where it can.
    res = host().explain(spec)
    if res.plan is not None:
        assert res.plan.dispatcher == "torch:all_to_all"


@pytest.mark.parametrize("ep, ok", [(2, True), (4, True), (8, True), (6, False), (16, True),
                                    (24, False), (32, True)])
def test_normal_mode_rank_counts(deep_ep_present, ep, ok):
    spec = SPEC.replace(tp_size=ep, ep_size=ep, num_experts=96, a2a="deepep_normal")
    assert verdicts(spec, cfg(spec))["normal"].supported is ok


def test_normal_mode_does_not_deliver_the_masked_layout_or_nvfp4(deep_ep_present):
    spec = SPEC.replace(a2a="deepep_normal")
    assert "delivers standard/contiguous layouts" in verdicts(spec, cfg(spec, layout="masked"))["normal"].reason
    assert "moves bf16/fp8" in verdicts(spec, cfg(spec, dtype="nvfp4"))["normal"].reason


# -- S3 / S4: what DeepEP is told ---------------------------------------------------------
def test_bf16_dispatch_gets_no_fp8_options():
    """S3: a kernel that quantizes internally gets BF16 tokens and no round_scale/use_ue8m0."""
    assert low_latency_kwargs(cfg()) == {"use_fp8": False}


def test_fp8_dispatch_passes_the_runners_scale_options():
    kw = low_latency_kwargs(cfg(dtype="fp8", round_scale=True, use_ue8m0=True))
    assert kw == {"use_fp8": True, "round_scale": True, "use_ue8m0": True}
    assert low_latency_kwargs(cfg(dtype="fp8")) == {"use_fp8": True, "round_scale": False,
                                                    "use_ue8m0": False}


def test_nvfp4_dispatch_passes_the_input_global_scale():
    scale = torch.tensor([0.5])
    kw = low_latency_kwargs(cfg(dtype="nvfp4", nvfp4_global_scale=True), scale)
    assert kw.keys() == {"use_fp8", "use_nvfp4", "x_global_scale"} and kw["x_global_scale"] is scale
    assert kw["use_fp8"] is False and kw["use_nvfp4"] is True
    with pytest.raises(InputError, match="no x_global_scale was given"):
        low_latency_kwargs(cfg(dtype="nvfp4", nvfp4_global_scale=True))


def test_the_plan_dtype_reaches_deepep_unchanged(deep_ep_present):
    """S4: the runner's configure_dispatcher decides the dtype; the dispatcher only obeys."""
    for quant, dtype in (("bf16", "fp8"), ("fp8_block128", "fp8")):
        plan = host().resolve(SPEC.replace(quant=quant))
        assert plan.dispatcher == "deepep:low_latency" and plan.dispatch.dtype == dtype
        assert low_latency_kwargs(plan.dispatch)["use_fp8"] is True
    bf16 = dataclasses.replace(host().resolve(SPEC).dispatch, dtype="bf16")
    assert low_latency_kwargs(bf16) == {"use_fp8": False}
