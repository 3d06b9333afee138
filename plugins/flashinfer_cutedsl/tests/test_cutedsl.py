"""CuTe-DSL plugin on CPU: the layouts against definitional implementations, the weight
round trip, and scenario S3 (v1/v2 chosen by resolution, DeepEP told the right things)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import moe_plugin_cutedsl as plugin
from moe_core import Host, Layout, MoESpec, Reason, Wire
from moe_core.cli import main
from moe_core.quant.fp4 import dequantize_nvfp4
from moe_core.registry import Registry
from moe_core.synthetic import random_weights
from moe_plugin_cutedsl.layouts import (deinterleave_halves, from_mma_view, interleave_halves,
                                        mma_view, swizzle_scales, unswizzle_scales)
from moe_plugin_cutedsl.weights import V1_LAYOUT, V2_LAYOUT, canonical, process


SPEC = MoESpec(num_experts=16, top_k=4, hidden_size=2048, intermediate_size=256, quant="nvfp4",
               tp_size=2, ep_size=2, a2a="deepep_ll", arch="sm100", max_tokens=128)
#: Small enough to build weights for on the CPU.
SMALL = SPEC.replace(hidden_size=256, arch="cpu")


@pytest.fixture
def kernels_assumed(monkeypatch):
    monkeypatch.setenv("MOE_ASSUME_INSTALLED", "flashinfer,deep_ep")


def host():
    import moe_plugin_deepep

    reg = Registry.builtin()
    reg.register(plugin, "flashinfer_cutedsl")
    reg.register(moe_plugin_deepep, "deepep")
    return Host(reg)


# -- layouts vs their definitions -----------------------------------------------------------
def _swizzle_by_definition(scale):
    E, M, K = scale.shape
    Mp, Kp = -(-M // 128) * 128, -(-K // 4) * 4
    out = torch.zeros(E, Mp * Kp, dtype=scale.dtype)
    for e in range(E):
        for m in range(M):
            for k in range(K):
                flat = ((((m // 128) * (Kp // 4) + k // 4) * 32 + m % 32) * 4 + (m % 128) // 32) * 4 + k % 4
                out[e, flat] = scale[e, m, k]
    return out.reshape(E, Mp, Kp)


@pytest.mark.parametrize("shape", [(2, 128, 4), (1, 200, 10), (3, 256, 24)])
def test_swizzle_matches_its_definition_and_inverts(shape):
    s = torch.randn(*shape)
    sw = swizzle_scales(s)
    assert torch.equal(sw, _swizzle_by_definition(s))
    assert torch.equal(unswizzle_scales(sw, *shape[1:]), s)


def test_mma_view_reads_each_scale_at_its_coordinates():
    E, M, K = 2, 256, 8
    s = torch.randn(E, M, K)
    view = mma_view(swizzle_scales(s))
    assert view.shape == (32, 4, M // 128, 4, K // 4, E)
    for e, m, k in [(0, 0, 0), (1, 37, 5), (0, 255, 7), (1, 130, 3)]:
        assert view[m % 32, (m % 128) // 32, m // 128, k % 4, k // 4, e] == s[e, m, k]
    assert torch.equal(from_mma_view(view), swizzle_scales(s))


def test_interleave_halves_matches_its_definition_and_inverts():
    E, I, K = 2, 192, 3
    w = torch.randn(E, 2 * I, K)
    gate, up = w[:, :I], w[:, I:]
    out = interleave_halves(w)
    for i in range(2 * I):
        g, r = divmod(i, 128)
        src = up if r < 64 else gate
        assert torch.equal(out[:, i], src[:, g * 64 + r % 64])
    assert torch.equal(deinterleave_halves(out), w)


# -- weights -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, layout", [("v1", V1_LAYOUT), ("v2", V2_LAYOUT)])
def test_processing_round_trips_and_keeps_the_dequantized_weights(variant, layout):
    spec = SMALL.replace(a2a="none", tp_size=1, ep_size=1) if variant == "v2" else SMALL
    w = random_weights(spec)
    p = process(variant, w)
    assert p.layout == layout and p.w13.shape == w.w13.shape
    back = canonical(p)
    for name in ("w13", "w2", "w13_scale", "w2_scale", "w13_global_scale", "w2_global_scale"):
        assert torch.equal(getattr(back, name), getattr(w, name)), name
    # Dequantize the processed rows with their own (unswizzled) scales: v1 rows are the
    # canonical [Gate, Up] rows, v2 rows are the interleaved ones.
    H, I = spec.hidden_size, spec.intermediate_per_partition
    s13 = p.w13_scale if variant == "v1" else from_mma_view(p.w13_scale)
    s13 = unswizzle_scales(s13, 2 * I, H // 16)
    got = torch.stack([dequantize_nvfp4(p.w13[e], s13[e], p.w13_global_scale[e], H)
                       for e in range(spec.local_experts)])
    want = torch.stack([dequantize_nvfp4(w.w13[e], w.w13_scale[e], w.w13_global_scale[e], H)
                        for e in range(spec.local_experts)])
    assert torch.equal(got, want if variant == "v1" else interleave_halves(want))


# -- S3: the variant and the dispatcher follow the spec --------------------------------------
def test_deepep_low_latency_resolves_to_v1_with_bf16_dispatch(kernels_assumed):
    from moe_plugin_deepep.args import low_latency_kwargs

    plan = host().resolve(SPEC)
    assert str(plan.backend) == "flashinfer_cutedsl:v1"
    assert str(plan.dispatcher) == "deepep:low_latency"
    d = plan.dispatch
    assert (d.layout, d.wire, d.round_scale, d.use_ue8m0) == (Layout.MASKED, Wire.BF16, False, False)
    assert low_latency_kwargs(d) == {"use_fp8": False}


def test_static_input_scale_dispatches_nvfp4_with_the_global_scale(kernels_assumed):
    from moe_plugin_deepep.args import low_latency_kwargs

    plan = host().resolve(SPEC.replace(static_input_scale=True))
    assert str(plan.backend) == "flashinfer_cutedsl:v1"
    assert plan.dispatch.wire is Wire.NVFP4 and plan.dispatch.deliver_quantized
    # torch's dispatcher cannot move nvfp4: only DeepEP serves this plan.
    assert str(plan.dispatcher) == "deepep:low_latency"
    kw = low_latency_kwargs(plan.dispatch, x_global_scale=torch.ones(1))
    assert kw["use_nvfp4"] is True and "x_global_scale" in kw and kw["use_fp8"] is False


def test_no_a2a_resolves_to_v2(kernels_assumed):
    plan = host().resolve(SPEC.replace(tp_size=1, ep_size=1, a2a="none"))
    assert str(plan.backend) == "flashinfer_cutedsl:v2" and plan.dispatcher is None


def test_deepep_low_latency_never_fails_for_want_of_a_fused_function():
    """S3's regression: without the kernels the layer still resolves, with reasons."""
    res = host().explain(SPEC)
    assert res.plan is not None
    v1 = next(c for c in res.candidates if str(c.backend) == "flashinfer_cutedsl:v1")
    assert v1.code is Reason.DEPENDENCY_MISSING and "flashinfer not importable" in v1.reason


def test_other_runners_get_what_their_own_declarations_say(kernels_assumed):
    spec = SPEC.replace(quant="fp8_block128", arch="sm90")
    plan = host().resolve(spec, force="reference")
    assert plan.dispatch.wire is Wire.BF16  # the reference takes bf16; no FP8 default to undo


def test_hopper_declines_both_variants_with_the_reason(kernels_assumed):
    res = host().explain(SPEC.replace(arch="sm90"))
    for v in ("v1", "v2"):
        c = next(c for c in res.candidates if str(c.backend) == f"flashinfer_cutedsl:{v}")
        assert "need Blackwell (SM100 or newer), found sm90" in c.reason


@pytest.mark.parametrize("a2a, chosen, other, why", [
    ("deepep_ll", "v1", "v2", "a2a deepep_ll hands the runner the masked layout"),
    ("none", "v2", "v1", "a2a none hands the runner the standard layout")])
def test_moe_explain_on_sm100_shows_both_decisions(a2a, chosen, other, why, monkeypatch):
    monkeypatch.delenv("MOE_ASSUME_INSTALLED", raising=False)
    args = ["explain", "-m", "nvidia/DeepSeek-V3.1-NVFP4", "--arch", "sm100", "--tokens", "128",
            "--assume-installed", "flashinfer,deep_ep", "--json"]
    args += ["--tp", "8", "--ep", "8", "--a2a", a2a] if a2a != "none" else ["--tp", "1"]
    r = CliRunner().invoke(main, args)
    import json
    out = json.loads(r.output)
    assert out["chosen"] == {"plugin": "flashinfer_cutedsl", "variant": chosen}, r.output
    reasons = {(c["plugin"], c["variant"]): c["reason"] for c in out["candidates"]}
    assert why in reasons[("flashinfer_cutedsl", other)]
    codes = {(c["plugin"], c["variant"]): c["code"] for c in out["candidates"]}
    assert codes[("flashinfer_cutedsl", other)] == "layout_unsupported"
