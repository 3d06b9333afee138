"""The reference backend against an independent float64 computation, every format x activation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import host_with
from moe_core import MoESpec, Quant
from moe_core.quant import tolerance
from moe_core.reference.experts import ReferenceRunner
from moe_core.reference.oracle import float64_layer, relative_error
from moe_core.runner import combine, contiguous_layout, masked_layout
from moe_core.synthetic import random_inputs, random_weights

ACTIVATIONS = {
    "silu_gated": {},
    "gelu_gated": {},
    "relu2": {},
    "swiglu_limit_gptoss": dict(activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=1.702,
                                has_bias=True),
    "swiglu_limit_dsv4": dict(activation="swiglu_limit", swiglu_limit=3.0),
}


def make(quant, act, **kw):
    extra = dict(ACTIVATIONS[act])
    extra.setdefault("activation", act)
    return MoESpec(**{**dict(num_experts=8, top_k=2, hidden_size=192, intermediate_size=160,
                              quant=quant, act_dtype="fp32"), **extra, **kw})


@pytest.mark.parametrize("quant", [q.value for q in Quant])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_reference_matches_float64(quant, act):
    spec = make(quant, act)
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 24)
    out = host_with().load(spec, weights)(x, tw, ti)
    # Same quantized activations, float64 arithmetic: only fp32 rounding separates them.
    assert relative_error(out, float64_layer(spec, weights, x, tw, ti)) < 1e-4
    # Against unquantized activations: within the format's documented tolerance.
    loose = relative_error(out, float64_layer(spec, weights, x, tw, ti, quantize_activations=False))
    assert loose < tolerance(spec.quant)
    if spec.quant in (Quant.BF16, Quant.MXFP4):
        assert loose < 1e-5  # bf16 activations: nothing is quantized at run time


def test_bf16_activations_round_once_at_the_output():
    spec = make("bf16", "silu_gated", act_dtype="bf16")
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 24)
    out = host_with().load(spec, weights)(x, tw, ti)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, float64_layer(spec, weights, x, tw, ti)) < 1e-2


def test_grouped_mm_variant_matches_the_loop():
    """torch._grouped_mm also runs on the CPU, so its path is checked here before the GPU."""
    spec = make("bf16", "silu_gated", act_dtype="bf16", hidden_size=256, intermediate_size=128)
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 64)
    plan = host_with().resolve(spec)
    loop = ReferenceRunner(plan, weights)(x, tw, ti)
    grouped = ReferenceRunner(plan, weights, grouped_mm=True)(x, tw, ti)
    assert relative_error(grouped, loop) < 1e-2


def test_grouped_mm_is_chosen_only_on_sm90_bf16():
    host = host_with()
    assert host.resolve(make("bf16", "silu_gated", act_dtype="bf16", arch="sm90")).variant == "grouped_mm"
    assert host.resolve(make("bf16", "silu_gated", act_dtype="bf16", arch="sm80")).variant == "loop"
    assert host.resolve(make("fp8_block128", "silu_gated", arch="sm90")).variant == "loop"


@pytest.mark.parametrize("quant", ["bf16", "fp8_block128", "nvfp4"])
def test_contiguous_and_masked_layouts_equal_standard(quant):
    spec = make(quant, "silu_gated")
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 20)
    layer = host_with().load(spec, weights)
    standard = layer(x, tw, ti)
    rows, offsets, tokens, pairs = contiguous_layout(x, ti, 0, spec.local_experts)
    contiguous = layer.run_contiguous(rows, offsets)
    assert relative_error(combine(contiguous, tokens, pairs, tw, len(x)), standard) < 1e-5
    masked_x, counts = masked_layout(rows, offsets)
    for e in range(spec.local_experts):  # independent of masked_layout: rows of expert e, in order
        assert torch.equal(masked_x[e, : counts[e]], x[tokens[offsets[e]:offsets[e + 1]]])
    masked = layer.run_masked(masked_x, counts)
    for e in range(spec.local_experts):
        assert torch.allclose(masked[e, : counts[e]], contiguous[offsets[e]:offsets[e + 1]], atol=1e-6)
        assert masked[e, counts[e]:].abs().sum() == 0


@pytest.mark.parametrize("tp, ep", [(2, 1), (4, 2), (4, 4)])
def test_rank_partial_sums_add_up_to_the_whole_layer(tp, ep):
    """EP splits experts, TP the intermediate dim; biases are added once across TP ranks."""
    full = make("bf16", "swiglu_limit_gptoss")
    base = random_weights(full)
    x, tw, ti = random_inputs(full, 16)
    whole = host_with().load(full, base)(x, tw, ti)
    total = torch.zeros_like(whole)
    for rank in range(tp):
        spec = full.replace(tp_size=tp, ep_size=ep, rank=rank)
        E, I = spec.local_experts, spec.intermediate_per_partition
        e0, i0 = spec.first_expert, spec.moe_tp_rank * I
        experts = slice(e0, e0 + E)
        gate = base.w13[experts, i0:i0 + I]
        up = base.w13[experts, full.intermediate_size + i0:full.intermediate_size + i0 + I]
        shard = base.replace(
            w13=torch.cat([gate, up], 1), w2=base.w2[experts, :, i0:i0 + I],
            w13_bias=torch.cat([base.w13_bias[experts, i0:i0 + I],
                                base.w13_bias[experts, full.intermediate_size + i0:][:, :I]], 1),
            w2_bias=base.w2_bias[experts])
        total += host_with().load(spec, shard)(x, tw, ti)
    assert relative_error(total, whole) < 1e-5


@pytest.mark.parametrize("act", ["silu_gated", "relu2", "swiglu_limit_gptoss"])
def test_zero_padding_the_intermediate_changes_nothing(act):
    """S2's transformation, checked on the reference: pad each half of w13 and w2's input
    dim with zeros (961 -> 976 style), run with the padded plan, same output."""
    spec = make("bf16", act, intermediate_size=97 * 2, tp_size=2)
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 16)
    host = host_with()
    plan = host.resolve(spec)
    I, P = spec.intermediate_per_partition, 112
    halves = weights.w13.split(I, dim=1)
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, P - I))  # noqa: E731
    bias_halves = weights.w13_bias.split(I, dim=1) if weights.w13_bias is not None else None
    padded = weights.replace(
        w13=torch.cat([pad(h) for h in halves], 1),
        w2=torch.nn.functional.pad(weights.w2, (0, P - I)),
        w13_bias=None if bias_halves is None else torch.cat(
            [torch.nn.functional.pad(b, (0, P - I)) for b in bias_halves], 1))
    padded_plan = dataclasses.replace(plan, intermediate_padded=P)
    ref = ReferenceRunner(plan, weights)(x, tw, ti)
    out = ReferenceRunner(padded_plan, padded)(x, tw, ti)
    assert torch.equal(out, ref) or relative_error(out, ref) < 1e-6
