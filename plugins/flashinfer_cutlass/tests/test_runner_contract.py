"""The runner's call into the kernel, checked on a CPU against a model of the kernel.

``FakeModule`` computes what FlashInfer 0.5.3's binding and TensorRT-LLM's MoE kernel
compute for the arguments they are given (fc1 rows ``[Up, Gate]``, the gate half at
``+inter``; SwigluBias ``min(g, limit) * sigmoid(alpha * g) * (clamp(u, ±limit) + beta)``;
relu2; experts outside ``[ep_rank * E_local, ...)`` skipped; DeepSeek 128x128 block
scales, with both GEMM inputs quantized per 1x128 group in-kernel). If ``process_weights`` or the runner passed the weights in another order, a
wrong scale or the wrong EP rank, the output would leave the reference's tolerance.
The real kernel was checked the same way on the H100 (test_gpu_flashinfer_cutlass.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import moe_plugin_flashinfer_cutlass as plugin
from moe_core import Host, MoESpec, Quant, spec_for_model
from moe_core import assume_installed
from moe_core.quant import fake_quantize_activation
from moe_core.reference.oracle import relative_error
from moe_core.registry import Registry
from moe_core.runner import contiguous_layout
from moe_core.synthetic import random_inputs, random_weights
from moe_plugin_flashinfer_cutlass import runner as runner_module

SWIGLU, RELU2 = 3, 6


def _dequant_blocks(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.repeat_interleave(128, -2)[..., : w.shape[-2], :].repeat_interleave(128, -1)[..., : w.shape[-1]]
    return w.float() * s


class FakeRunner:
    def __init__(self, act, weight, out, deepseek, w4, mxfp8):
        assert act is torch.bfloat16 and out is torch.bfloat16 and not (w4 or mxfp8)
        self.deepseek = deepseek
        self.calls = []

    def quant(self, v: torch.Tensor) -> torch.Tensor:
        return fake_quantize_activation(Quant.FP8_BLOCK128, v[None])[0] if self.deepseek else v

    def run_moe(self, out, x, ids, scales, fc1, b1, fc2, b2, quant_scales, input_sf, alpha, beta, limit,
                tp_size, tp_rank, ep_size, ep_rank, cluster_size, cluster_rank, alltoall, min_latency,
                profile_ids, pdl, activation):
        self.calls.append(dict(ep=(ep_size, ep_rank), tp=(tp_size, tp_rank), activation=activation))
        assert ids.dtype is torch.int32 and scales.dtype is torch.float32 and x.dtype is torch.bfloat16
        if self.deepseek:
            fc1, fc2 = _dequant_blocks(fc1, quant_scales[0]), _dequant_blocks(fc2, quant_scales[1])
        local, inter = fc1.shape[0], fc2.shape[-1]
        acc = torch.zeros(out.shape, dtype=torch.float32)
        for t, (row, slot_scales) in enumerate(zip(ids.tolist(), scales)):
            for e, s in zip(row, slot_scales.tolist()):
                e -= ep_rank * local
                if not 0 <= e < local:
                    continue
                h = fc1[e].float() @ self.quant(x[t].float()) + (b1[e].float() if b1 is not None else 0)
                if activation == RELU2:
                    a = F.relu(h).square()
                else:
                    up, gate = h[:inter], h[inter:]
                    if alpha is None:
                        a = F.silu(gate) * up
                    else:
                        g = gate.clamp(max=limit[e].item())
                        u = up.clamp(-limit[e].item(), limit[e].item())
                        a = g * torch.sigmoid(alpha[e] * g) * (u + beta[e])
                y = fc2[e].float() @ self.quant(a) + (b2[e].float() if b2 is not None else 0)
                acc[t] += s * y
        out.copy_(acc)


class FakeModule:
    def __init__(self):
        self.runners = []

    def init(self, *args):
        self.runners.append(FakeRunner(*args))
        return self.runners[-1]


@pytest.fixture
def fake(monkeypatch):
    module = FakeModule()
    monkeypatch.setattr(runner_module, "load", lambda kind: module)
    return module


@pytest.fixture
def host():
    reg = Registry.builtin()
    reg.register(plugin, "flashinfer_cutlass")
    return Host(reg)


CASES = {
    "silu-bf16": MoESpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=96),
    "S2-961-fp8-blocks": MoESpec(num_experts=4, top_k=2, hidden_size=256, intermediate_size=7688, tp_size=8,
                                 quant="fp8_block128"),
    "S2-232-relu2": spec_for_model("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", tp=8).replace(
        num_experts=4, top_k=2, hidden_size=128),
    "gpt-oss-swiglu-bias": MoESpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=88,
                                   activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=1.702, has_bias=True),
    "clamped-silu": MoESpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=128,
                            activation="swiglu_limit", swiglu_limit=7.0),
    "ep2-rank1": MoESpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64, tp_size=2, ep_size=2,
                         rank=1, a2a="torch_a2a"),
}


def _plan_and_weights(host, spec):
    """The sm90 plan (the kernel's arch) with CPU weights: the host would want them on CUDA."""
    with assume_installed("flashinfer"):
        plan = host.resolve(spec.replace(arch="sm90"))
    assert plan.plugin == "flashinfer_cutlass"
    weights = random_weights(spec, device="cpu")
    return plan, weights, plugin.process_weights(plan, weights)


@pytest.mark.parametrize("name", list(CASES))
def test_the_kernel_call_gives_the_reference_output(host, fake, name):
    spec = CASES[name]
    plan, weights, processed = _plan_and_weights(host, spec)
    run = plugin.make_runner(plan, processed)
    x, tw, ti = random_inputs(spec, 16)
    out = run(x, tw, ti)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    # The model quantizes as the reference does, so only bf16 rounding remains (~3e-3).
    assert relative_error(out, ref) < 1e-2
    call = fake.runners[-1].calls[-1]
    assert call["ep"] == (spec.ep_size, spec.ep_rank) and call["tp"] == (1, 0)
    assert call["activation"] == (RELU2 if spec.activation.value == "relu2" else SWIGLU)


def test_a_wrong_half_order_would_be_caught(host, fake):
    """The contract test can fail: feed the kernel canonical [Gate, Up] rows unswapped."""
    spec = CASES["silu-bf16"]
    plan, weights, processed = _plan_and_weights(host, spec)
    run = plugin.make_runner(plan, processed.replace(w13=weights.w13))
    x, tw, ti = random_inputs(spec, 16)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    assert relative_error(run(x, tw, ti), ref) > 0.5


def test_contiguous_rows_are_a_top1_call_on_global_ids(host, fake):
    spec = CASES["ep2-rank1"]
    plan, weights, processed = _plan_and_weights(host, spec)
    run = plugin.make_runner(plan, processed)
    x, _, ti = random_inputs(spec, 32)
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    out = run.run_contiguous(rows, offsets)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights).run_contiguous(rows, offsets)
    assert out.shape == rows.shape and relative_error(out, ref) < 1e-2
