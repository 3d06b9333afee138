"""DeepGEMM on a real GPU (the H100 test machine; results in docs/results.md)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import moe_plugin_deepgemm as plugin
from moe_core import Host, spec_for_model
from moe_core.quant import tolerance
from moe_core.reference.oracle import relative_error
from moe_core.registry import Registry
from moe_core.runner import contiguous_layout, masked_layout
from moe_core.synthetic import random_inputs, random_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run scripts/gpu_session.sh "
                       "on the device machine (recorded in docs/results.md)"),
    pytest.mark.skipif(importlib.util.find_spec("deep_gemm") is None,
                       reason="deep_gemm not importable: scripts/gpu_session.sh builds it on the device"),
]


@pytest.fixture(scope="module")
def host():
    reg = Registry.builtin()
    reg.register(plugin, "deepgemm")
    return Host(reg)


@pytest.mark.parametrize("limit, alpha", [(None, None), (7.0, None), (7.0, 1.702)])
def test_fused_kernel_matches_its_definition(limit, alpha):
    from moe_plugin_deepgemm.fused_act import fused_silu_mul_quant, reference as definition

    h = (torch.randn(3, 64, 2 * 1024, device="cuda") * 4).to(torch.bfloat16)
    q, s = fused_silu_mul_quant(h, limit, alpha)
    q_ref, s_ref = definition(h, limit, alpha)
    assert s.stride(-2) == 1, "scales must be MN-major"
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    deq = q.float().unflatten(-1, (-1, 128)) * s[..., None]
    deq_ref = q_ref.float().unflatten(-1, (-1, 128)) * s_ref[..., None]
    assert relative_error(deq, deq_ref) < 1e-2


@pytest.mark.parametrize("E, M, I", [(3, 128, 768), (2, 10, 192)])  # Qwen3-30B's I; ragged
def test_counted_bf16_activation_matches_apply_activation(E, M, I):
    """The unfused masked paths' activation (silu_mul): apply_activation on each expert's
    counted rows, rows past them never written."""
    from moe_core import MoESpec
    from moe_core.activations import apply_activation
    from moe_plugin_deepgemm.fused_act import silu_mul

    h = (torch.randn(E, M, 2 * I, device="cuda") * 3).to(torch.bfloat16)
    counts = torch.tensor([M, 0, 3][:E], dtype=torch.int32, device="cuda")
    out = torch.full((E, M, I), -4096.0, dtype=torch.bfloat16, device="cuda")
    silu_mul(h, counts=counts, out=out)
    spec = MoESpec(num_experts=4, top_k=1, hidden_size=128, intermediate_size=I)
    want = apply_activation(spec, h.float()).to(torch.bfloat16)
    for e, n in enumerate(counts.tolist()):
        torch.testing.assert_close(out[e, :n].float(), want[e, :n].float(), rtol=2 ** -7, atol=1e-30)
        assert bool((out[e, n:] == -4096.0).all()), f"expert {e}: a row past its count was written"


def test_group_quant_kernel_matches_the_reference_quantizer():
    from moe_core.quant.fp8 import quantize_fp8_blockwise
    from moe_core.kernels.group_quant import quantize_groups

    x = torch.randn(300, 1024, device="cuda").to(torch.bfloat16)
    src = torch.tensor([5, -1, 0, 299, -1] * 20, device="cuda")
    q, s = quantize_groups(x, src)
    rows = torch.where((src >= 0)[:, None], x[src.clamp(min=0)], torch.zeros((), device="cuda", dtype=x.dtype))
    q_ref, s_ref = quantize_fp8_blockwise(rows, 1, 128)
    assert s.stride(-2) == 1
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    assert (q.float() - q_ref.float()).abs().max() <= 32  # at most one e4m3 step apart near 448
    qb, sb = quantize_groups(x[:256].view(2, 128, 1024))
    torch.testing.assert_close(sb, quantize_fp8_blockwise(x[:256].view(2, 128, 1024), 1, 128)[1])


CASES = [  # model, quant, tp, experts kept, expected variant at decode / prefill
    ("Qwen/Qwen3-30B-A3B", "bf16", 1, 32, "masked", "contiguous"),
    ("Qwen/Qwen3-30B-A3B-FP8", None, 1, 32, "masked", "contiguous"),  # G=6: S1 unfused
    ("Qwen/Qwen3-235B-A22B-FP8", None, 1, 16, "masked_fused", "contiguous_fused"),  # G=12
    ("deepseek-ai/DeepSeek-V3", None, 1, 16, "masked_fused", "contiguous_fused"),  # G=16
    ("deepseek-ai/DeepSeek-V3", None, 8, 16, "masked", "contiguous"),  # I/rank 256: G=2
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", None, 1, 16, "masked", "contiguous"),  # relu2
]


@pytest.mark.parametrize("model, quant, tp, experts, decode, prefill", CASES,
                         ids=[f"{c[0].split('/')[1]}-tp{c[2]}" for c in CASES])
@pytest.mark.parametrize("tokens", [64, 2048], ids=["decode", "prefill"])
def test_resolved_deepgemm_matches_the_reference(host, model, quant, tp, experts, decode, prefill, tokens):
    spec = spec_for_model(model, quant=quant, tp=tp, experts=experts, arch="auto", max_tokens=tokens)
    plan = host.resolve(spec)
    assert str(plan.backend) == f"deepgemm:{decode if tokens <= 256 else prefill}"
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, tokens)
    out = host.load(plan, weights)(x, tw, ti)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    err = relative_error(out, ref)
    print(f"\n{plan.backend} {model} tp{tp} tokens={tokens}: rel err vs reference {err:.2e}")
    assert err < tolerance(spec.quant)


@pytest.mark.parametrize("quant", ["bf16", "fp8_block128"])
def test_masked_layout_from_deepep_low_latency(host, quant):
    spec = spec_for_model("deepseek-ai/DeepSeek-V3", quant=quant, experts=32, tp=2, ep=2, rank=1,
                          a2a="deepep_ll", arch="auto", max_tokens=128)
    plan = host.resolve(spec)
    assert plan.plugin == "deepgemm" and plan.dispatch.layout == "masked"
    assert plan.dispatch.wire.value == ("bf16" if quant == "bf16" else "fp8")  # S4
    weights = random_weights(spec)
    x, _, ti = random_inputs(spec, 128)
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    masked, counts = masked_layout(rows, offsets, spec.max_tokens * spec.ep_size)
    out = host.load(plan, weights).run_masked(masked, counts)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights).run_masked(masked, counts)
    valid = torch.arange(masked.shape[1], device="cuda")[None, :] < counts[:, None]
    assert relative_error(out[valid], ref[valid]) < tolerance(spec.quant)


def test_kernels_skip_rows_past_each_count():
    from moe_plugin_deepgemm.fused_act import fused_silu_mul_quant
    from moe_core.kernels.group_quant import quantize_groups

    h = torch.randn(3, 128, 2048, device="cuda").to(torch.bfloat16)
    counts = torch.tensor([0, 5, 128], dtype=torch.int32, device="cuda")
    q_all, s_all = fused_silu_mul_quant(h)
    q, s = fused_silu_mul_quant(h, counts=counts)
    for e, n in enumerate(counts.tolist()):
        assert torch.equal(q[e, :n].view(torch.uint8), q_all[e, :n].view(torch.uint8))
        assert torch.equal(s[e, :n], s_all[e, :n])
    x = h[..., :1024]
    q_all, s_all = quantize_groups(x)
    q, s = quantize_groups(x, counts=counts)
    for e, n in enumerate(counts.tolist()):
        assert torch.equal(s[e, :n], s_all[e, :n])


# -- the standard layout: device-side permute and combine (moe_core.kernels.permute) --------
def _ep8_layer(host, quant, tokens):
    """DeepSeek-V3 experts of rank 3 under EP 8 (32 local of 256, H 7168, I 2048)."""
    spec = spec_for_model("deepseek-ai/DeepSeek-V3", quant=quant, tp=8, ep=8, rank=3, arch="auto",
                          max_tokens=tokens)
    plan = host.resolve(spec)
    assert plan.plugin == "deepgemm" and plan.graph_safe
    weights = random_weights(spec)
    return spec, weights, host.load(plan, weights, check_values=False)


@pytest.mark.parametrize("quant", ["bf16", "fp8_block128"])
@pytest.mark.parametrize("tokens", [4, 128, 512])
@pytest.mark.parametrize("path", ["masked", "contiguous"])
def test_standard_layout_both_paths_under_ep_match_the_reference(host, quant, tokens, path):
    spec, weights, layer = _ep8_layer(host, quant, tokens)
    layer.runner.force_path = path
    x, tw, ti = random_inputs(spec, tokens)
    out = layer(x, tw, ti)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    err = relative_error(out, ref)
    print(f"\nDeepSeek-V3 EP8 {quant} T={tokens} {path}: rel err vs reference {err:.2e}")
    assert err < tolerance(spec.quant)


@pytest.mark.parametrize("quant", ["bf16", "fp8_block128"])
@pytest.mark.parametrize("tokens", [64, 512], ids=["masked", "contiguous"])
def test_a_loaded_layer_captures_in_a_cuda_graph_and_replays(host, quant, tokens):
    spec, _, layer = _ep8_layer(host, quant, tokens)
    if tokens == 512:  # the contiguous path, forced (uses_masked picks masked here)
        layer.runner.force_path = "contiguous"
    graphed = layer.graphed([tokens], copy_out=False)  # warms up (compiles) outside the capture
    first = graphed(*random_inputs(spec, tokens, seed=1)).clone()
    fresh = random_inputs(spec, tokens, seed=2)
    out = graphed(*fresh)
    torch.cuda.synchronize()
    assert torch.equal(out, layer(*fresh)), "replay differs from an eager call on the same inputs"
    assert not torch.equal(out, first)
