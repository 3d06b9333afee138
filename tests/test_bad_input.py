"""Bad weights and bad runner inputs get errors naming the tensor and the expectation."""

from __future__ import annotations

import pytest
import torch

from conftest import host_with
from moe_core import InputError, MoESpec, WeightsError
from moe_core.synthetic import random_inputs, random_weights

SPEC = MoESpec(num_experts=4, top_k=2, hidden_size=64, intermediate_size=32, quant="fp8_block128",
               max_tokens=16)


@pytest.fixture(scope="module")
def weights():
    return random_weights(SPEC)


@pytest.mark.parametrize("change, message", [
    (lambda w: w.replace(w13=w.w13[:, :10]), r"w13 has shape \(4, 10, 64\); expected \(4, 64, 64\)"),
    (lambda w: w.replace(w2=w.w2.float()), "w2 has dtype float32; expected float8_e4m3fn"),
    (lambda w: w.replace(w13_scale=None), "w13_scale is missing"),
    (lambda w: w.replace(w13_bias=torch.zeros(4, 64)), "w13_bias is set but fp8_block128 weights without bias"),
    (lambda w: w.replace(w2_scale=w.w2_scale.to("meta")), "w2_scale is on meta; expected a cpu tensor"),
    (lambda w: "weights", "expected moe_core.MoEWeights, got str"),
])
def test_bad_weights(weights, change, message):
    with pytest.raises(WeightsError, match=message):
        host_with().load(SPEC, change(weights))


def test_weights_are_never_mutated(weights):
    before = {k: v.clone() for k, v in weights.tensors().items()}
    layer = host_with().load(SPEC, weights)
    layer(*random_inputs(SPEC, 8))
    assert all(torch.equal(before[k].view(torch.uint8), v.view(torch.uint8))
               for k, v in weights.tensors().items())


@pytest.mark.parametrize("call, message", [
    (lambda x, w, i: (x[:, :32], w, i), r"x has shape \(8, 32\); expected 2 dims ending in hidden_size 64"),
    (lambda x, w, i: (x.float(), w, i), "x has dtype torch.float32; the plan's activation dtype is torch.bfloat16"),
    (lambda x, w, i: (x, w, i[:, :1]), r"topk_ids has shape \(8, 1\); expected \(8, 2\)"),
    (lambda x, w, i: (x, w, i.float()), "topk_ids has dtype torch.float32; expected int32 or int64"),
    (lambda x, w, i: (x, w, i + 4), r"topk_ids range \[\d, \d\] is outside \[0, 4\)"),
    (lambda x, w, i: (x.repeat(3, 1), w.repeat(3, 1), i.repeat(3, 1)),
     "x has 24 tokens; the plan was resolved for at most 16"),
    (lambda x, w, i: (x, w.int(), i), "topk_weights has dtype torch.int32; expected a float dtype"),
    (lambda x, w, i: ("x", w, i), "x is str; expected a torch.Tensor"),
])
def test_bad_runner_inputs(weights, call, message):
    layer = host_with().load(SPEC, weights)
    with pytest.raises(InputError, match=message):
        layer(*call(*random_inputs(SPEC, 8)))


def test_bad_masked_and_contiguous_inputs(weights):
    layer = host_with().load(SPEC, weights)
    x = torch.zeros(4, 5, 64, dtype=torch.bfloat16)
    with pytest.raises(InputError, match=r"masked_m values must lie in \[0, 5\]"):
        layer.run_masked(x, torch.tensor([1, 2, 9, 0]))
    with pytest.raises(InputError, match=r"expected \(4, M, H\) and \(4,\)"):
        layer.run_masked(x[:3], torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="offsets must rise from 0 to the 6 rows"):
        layer.run_contiguous(torch.zeros(6, 64, dtype=torch.bfloat16), torch.tensor([0, 2, 1, 6, 6]))
