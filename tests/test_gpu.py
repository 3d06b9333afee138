"""The reference backend on a CUDA GPU (run on the device machine; results in docs/results.md)."""

from __future__ import annotations

import pytest
import torch

from conftest import host_with
from moe_core import spec_for_model
from moe_core.quant import tolerance
from moe_core.reference.oracle import float64_layer, relative_error
from moe_core.synthetic import random_inputs, random_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: run scripts/gpu_session.sh on the device machine "
                              "(recorded in docs/results.md)"),
]

CASES = [  # (model, quant, experts, tp): real shapes, experts sliced to fit a quick run
    ("Qwen/Qwen3-30B-A3B", "bf16", 32, 1),
    ("Qwen/Qwen3-30B-A3B-FP8", None, 32, 1),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-FP8", None, 16, 8),
    ("nvidia/Qwen3-30B-A3B-NVFP4", None, 16, 2),
    ("openai/gpt-oss-20b", None, 8, 1),
    ("deepseek-ai/DeepSeek-V3", "bf16", 16, 8),
]


@pytest.mark.parametrize("model, quant, experts, tp", CASES, ids=[c[0].split("/")[1] for c in CASES])
@pytest.mark.parametrize("tokens", [64, 2048], ids=["decode", "prefill"])
def test_resolved_reference_on_gpu_matches_float64(model, quant, experts, tp, tokens):
    spec = spec_for_model(model, quant=quant, experts=experts, tp=tp, arch="auto", max_tokens=tokens)
    assert spec.arch.startswith("sm")
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, tokens)
    layer = host_with().load(spec, weights)
    out = layer(x, tw, ti)
    n = 128
    exact = float64_layer(spec, weights, x[:n], tw[:n], ti[:n], quantize_activations=False)
    err = relative_error(out[:n], exact)
    print(f"\nGPU {layer.plan.backend} {model} tokens={tokens}: rel err {err:.2e} "
          f"(tolerance {tolerance(spec.quant):.2g})")
    assert err < tolerance(spec.quant)
    if spec.quant.value == "bf16" and (spec.sm or 0) >= 90:
        assert layer.plan.variant == "grouped_mm"
