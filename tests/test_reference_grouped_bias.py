"""``reference:grouped_mm`` applies expert biases exactly as the ``loop`` path does.

``torch._grouped_mm`` runs on the CPU too, so the variant's own code path is checked here;
the GPU test at the end runs the same layer where the variant is chosen (SM90+).
"""

from __future__ import annotations

import pytest
import torch

from conftest import host_with
from moe_core import MoESpec, spec_for_model
from moe_core.reference.experts import ReferenceRunner
from moe_core.reference.oracle import float64_layer, relative_error
from moe_core.runner import contiguous_layout
from moe_core.synthetic import random_inputs, random_weights

GPT_OSS = dict(activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=1.702, has_bias=True)


def _spec(**kw) -> MoESpec:
    return MoESpec(**{**dict(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128,
                             quant="bf16", act_dtype="bf16"), **GPT_OSS, **kw})


@pytest.mark.parametrize("tp, rank", [(1, 0), (2, 0), (2, 1)], ids=["tp1", "tp2-rank0", "tp2-rank1"])
def test_grouped_mm_with_biases_matches_the_loop_and_float64(tp, rank):
    """Under TP only rank 0 adds the w2 bias; both variants must agree on every rank."""
    spec = _spec(tp_size=tp, rank=rank)
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 64)
    plan = host_with().resolve(spec, force="reference:loop")
    loop = ReferenceRunner(plan, weights)(x, tw, ti)
    grouped = ReferenceRunner(plan, weights, grouped_mm=True)(x, tw, ti)
    exact = float64_layer(spec, weights, x, tw, ti, quantize_activations=False)
    assert relative_error(loop, exact) < 1e-2
    assert relative_error(grouped, exact) < 1e-2, "grouped_mm drops or misplaces the biases"
    assert relative_error(grouped, loop) < 1e-2


def test_grouped_mm_biases_follow_each_rows_expert_and_skip_padding_rows():
    """Per-row bias lookup: rows past the last offset (a dispatcher's padding) get none."""
    spec = _spec()
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 32)
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    plan = host_with().resolve(spec, force="reference:loop")
    padded = torch.cat([rows, torch.zeros(5, spec.hidden_size, dtype=rows.dtype)])
    loop = ReferenceRunner(plan, weights).run_contiguous(padded, offsets)
    grouped = ReferenceRunner(plan, weights, grouped_mm=True).run_contiguous(padded, offsets)
    n = rows.shape[0]
    assert relative_error(grouped[:n], loop[:n]) < 1e-2
    assert grouped.dtype == loop.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU (SM90+ chooses reference:grouped_mm): run "
                           "scripts/gpu_session.sh on the device machine")
def test_gpt_oss_bf16_layer_resolved_to_grouped_mm_on_gpu_matches_float64():
    spec = spec_for_model("openai/gpt-oss-20b", quant="bf16", experts=8, arch="auto", max_tokens=64)
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, 64)
    layer = host_with().load(spec, weights)
    if (spec.sm or 0) >= 90:
        assert layer.plan.variant == "grouped_mm"
    exact = float64_layer(spec, weights, x, tw, ti, quantize_activations=False)
    assert relative_error(layer(x, tw, ti), exact) < 1e-2
