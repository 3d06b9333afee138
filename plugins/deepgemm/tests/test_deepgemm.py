"""DeepGEMM plugin on CPU: declarations (S1), dispatcher (S4), overlap (S5), weight layout,
and the runner's plumbing against the reference through a stand-in ``deep_gemm``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import moe_plugin_deepgemm as plugin
from moe_core import Host, Layout, MoESpec, Reason, Wire, spec_for_model
from moe_core.reference.oracle import relative_error
from moe_core.registry import Registry
from moe_core.synthetic import random_inputs, random_weights
from moe_plugin_deepgemm.runner import DeepGemmRunner
from moe_plugin_deepgemm.weights import prepare

FAKE = Path(__file__).with_name("fake_deep_gemm")


@pytest.fixture
def fake_dg(monkeypatch):
    """Make ``deep_gemm`` importable as the CPU stand-in for one test."""
    monkeypatch.syspath_prepend(str(FAKE))  # before host(): each host probes deep_gemm once
    monkeypatch.delitem(sys.modules, "deep_gemm", raising=False)
    import deep_gemm
    deep_gemm.calls.clear()
    yield deep_gemm
    sys.modules.pop("deep_gemm", None)


def host():
    reg = Registry.builtin()
    reg.register(plugin, "deepgemm")
    return Host(reg)


def trace(spec):
    return {c.variant: c for c in host().explain(spec, force="", disable=()).candidates
            if c.plugin == "deepgemm"}


# -- S1: declarations --------------------------------------------------------------
@pytest.mark.parametrize("tp, fused, unfused", [
    (1, "G = 6 groups of 128", None),
    (2, "G = 3 groups of 128", None),
    (4, "intermediate per partition 192 is not a multiple of 128", "192 is not a multiple of 128"),
    (8, "intermediate per partition 96 is not a multiple of 128", "96 is not a multiple of 128"),
])
def test_s1_qwen3_fp8_falls_from_fused_to_unfused(fake_dg, tp, fused, unfused):
    spec = spec_for_model("Qwen/Qwen3-30B-A3B-FP8", tp=tp, arch="sm90")
    t = trace(spec)
    assert fused in t["contiguous_fused"].reason and not t["contiguous_fused"].supported
    assert t["contiguous_fused"].code is Reason.SHAPE_UNALIGNED
    if unfused is None:
        assert t["contiguous"].status == "chosen"
    else:
        assert unfused in t["contiguous"].reason
        assert host().resolve(spec).plugin == "reference"


def test_s1_a_clamp_limit_on_an_unaligned_shape_falls_to_another_plugin(fake_dg):
    spec = MoESpec(num_experts=16, top_k=4, hidden_size=2048, intermediate_size=768,
                   quant="fp8_block128", activation="swiglu_limit", swiglu_limit=7.0, arch="sm90")
    t = trace(spec)
    assert "G = 6" in t["contiguous_fused"].reason
    assert t["contiguous"].code is Reason.ACTIVATION_UNSUPPORTED
    assert host().resolve(spec).plugin == "reference"
    aligned = spec.replace(intermediate_size=1024)  # G = 8: the fused kernel takes the clamp
    assert str(host().resolve(aligned).backend) == "deepgemm:contiguous_fused"


def test_deepep_masked_buffer_rows_must_be_whole_tiles(fake_dg):
    spec = MoESpec(num_experts=64, top_k=8, hidden_size=2048, intermediate_size=1024,
                   quant="fp8_block128", arch="sm90", a2a="deepep_ll", tp_size=2, ep_size=2,
                   max_tokens=100)
    t = trace(spec)
    for variant in ("masked", "masked_fused"):
        assert "N = 200 rows per expert" in t[variant].reason and "N % 128" in t[variant].reason
    assert host().resolve(spec).plugin == "reference"
    assert str(host().resolve(spec.replace(max_tokens=128)).backend) == "deepgemm:masked_fused"


@pytest.mark.parametrize("change, code, reason", [
    (dict(arch="sm80"), Reason.ARCH_UNSUPPORTED, "needs an NVIDIA SM90 GPU"),
    (dict(arch="cpu"), Reason.ARCH_UNSUPPORTED, "needs an NVIDIA SM90 GPU"),
    (dict(arch="sm100"), Reason.NOT_IMPLEMENTED, "SM100 is not offered"),
    (dict(quant="nvfp4"), Reason.QUANT_UNSUPPORTED, "weights must be bf16 or fp8_block128"),
    (dict(act_dtype="fp32"), Reason.ACT_DTYPE_UNSUPPORTED, "bf16 activations"),
    (dict(activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=1.702, has_bias=True),
     Reason.BIAS_UNSUPPORTED, "expert biases are not supported"),
    (dict(hidden_size=2000), Reason.SHAPE_UNALIGNED, "hidden 2000 is not a multiple of 64"),
])
def test_declines_with_the_real_constraint(fake_dg, change, code, reason):
    base = MoESpec(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=1024, arch="sm90")
    for c in trace(base.replace(**change)).values():
        assert reason in c.reason and not c.supported and c.code is code


def test_without_deep_gemm_the_host_says_so_after_the_shape_reasons():
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=1024, arch="sm90")
    t = trace(spec)
    assert t["contiguous"].code is Reason.DEPENDENCY_MISSING
    assert "deep_gemm not importable" in t["contiguous"].reason
    assert t["contiguous_fused"].code is Reason.QUANT_UNSUPPORTED  # the shape reason still shows


def test_decode_prefers_masked_and_prefill_contiguous(fake_dg):
    spec = spec_for_model("Qwen/Qwen3-30B-A3B", arch="sm90", max_tokens=64)
    assert str(host().resolve(spec).backend) == "deepgemm:masked"
    assert str(host().resolve(spec.replace(max_tokens=4096)).backend) == "deepgemm:contiguous"


# -- S4: the wire follows the declarations --------------------------------------------
@pytest.mark.parametrize("quant, wire", [("bf16", Wire.BF16), ("fp8_block128", Wire.FP8)])
@pytest.mark.parametrize("a2a", ["deepep_normal", "deepep_ll", "torch_a2a"])
def test_s4_dispatch_wire(fake_dg, quant, wire, a2a, arch="sm90"):
    """S4: BF16 dispatch for unquantized BF16 layers on DeepGEMM (DeepEP low-latency
    included); fp8 layers keep FP8 with fp32 scales (no UE8M0 on SM90)."""
    spec = MoESpec(num_experts=64, top_k=8, hidden_size=2048, intermediate_size=1024, quant=quant,
                   arch=arch, a2a=a2a, tp_size=8, ep_size=8, max_tokens=128)
    d = host().resolve(spec, force="deepgemm").dispatch
    assert d.wire is wire and not (d.round_scale or d.use_ue8m0)


def test_s4_no_default_to_undo(fake_dg):
    """No plugin turns the wire back: a bf16 layer never had FP8 on the wire, whoever runs it
    (the reference, forced, moves what it computes on: bf16)."""
    spec = MoESpec(num_experts=64, top_k=8, hidden_size=2048, intermediate_size=1024,
                   arch="sm90", a2a="deepep_ll", tp_size=8, ep_size=8, max_tokens=128)
    assert host().resolve(spec, force="reference:loop").dispatch.wire is Wire.BF16
    assert host().resolve(spec, force="deepgemm").dispatch.wire is Wire.BF16
    assert not hasattr(plugin, "configure_dispatcher")


# -- S5: overlap ----------------------------------------------------------------------
def test_s5_sbo_on_down_gemm_overlap_off_runs_without_unpacking(fake_dg):
    spec = MoESpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, arch="sm90",
                   quant="fp8_block128", max_tokens=16, sbo=True, down_gemm_overlap=True)
    plan = host().resolve(spec)
    assert plan.variant.startswith("masked")
    assert plan.overlap.sbo and not plan.overlap.down_gemm
    assert "no overlap signal arguments" in plan.overlap.reason
    runner = DeepGemmRunner(plan, prepare(plan, random_weights(spec, device="cpu")))
    runner(*random_inputs(spec, 8, device="cpu"))  # the fake returns None, as DeepGEMM does
    assert "fp8_masked" in fake_dg.calls


# -- weights and runner plumbing ------------------------------------------------------
def test_process_weights_never_touches_the_callers_tensors():
    spec = MoESpec(num_experts=2, top_k=1, hidden_size=256, intermediate_size=256,
                   quant="fp8_block128", arch="sm90")
    w = random_weights(spec, device="cpu")
    before = {k: v.view(torch.uint8).clone() for k, v in w.tensors().items()}
    plan = host().resolve(spec, force="reference")
    out = prepare(plan, w)
    assert out.layout == "deepgemm/sm90" and w.layout == "canonical"
    assert all(torch.equal(before[k], v.view(torch.uint8)) for k, v in w.tensors().items())


@pytest.mark.parametrize("path", ["masked", "contiguous"])
@pytest.mark.parametrize("quant, variant", [
    ("bf16", "contiguous"), ("bf16", "masked"), ("fp8_block128", "contiguous"),
    ("fp8_block128", "masked"), ("fp8_block128", "contiguous_fused"), ("fp8_block128", "masked_fused")])
def test_runner_matches_the_reference_through_the_stand_in(fake_dg, quant, variant, path):
    spec = MoESpec(num_experts=6, top_k=2, hidden_size=256, intermediate_size=512, quant=quant,
                   arch="sm90", max_tokens=64 if variant.startswith("masked") else 300)
    plan = host().resolve(spec, force=f"deepgemm:{variant}")
    assert plan.graph_safe
    weights = random_weights(spec, device="cpu")
    x, tw, ti = random_inputs(spec, 40, device="cpu")
    runner = DeepGemmRunner(plan, prepare(plan, weights))
    runner.force_path = path  # the standard call would pick by T (uses_masked)
    out = runner(x, tw, ti)
    ref_plan = host().resolve(spec, force="reference:loop")
    from moe_core.reference.experts import ReferenceRunner
    ref = ReferenceRunner(ref_plan, weights)(x, tw, ti)
    assert relative_error(out, ref) < (1e-2 if quant == "bf16" else 3e-2)
    assert fake_dg.calls and all(c == f"{quant.split('_')[0]}_{path}" for c in fake_dg.calls)
    empty = runner(x[:0], tw[:0], ti[:0])
    assert empty.shape == (0, 256)


@pytest.mark.parametrize("path", ["masked", "contiguous"])
def test_standard_call_under_ep_sums_this_ranks_experts(fake_dg, path):
    spec = MoESpec(num_experts=8, top_k=3, hidden_size=256, intermediate_size=512, quant="fp8_block128",
                   arch="sm90", tp_size=2, ep_size=2, rank=1, max_tokens=64)
    plan = host().resolve(spec, force="deepgemm:contiguous_fused")
    weights = random_weights(spec, device="cpu")
    x, tw, ti = random_inputs(spec, 13, device="cpu")  # ids of both ranks' experts
    assert bool((ti < spec.first_expert).any()) and bool((ti >= spec.first_expert).any())
    runner = DeepGemmRunner(plan, prepare(plan, weights))
    runner.force_path = path
    from moe_core.reference.experts import ReferenceRunner
    ref = ReferenceRunner(host().resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    assert relative_error(runner(x, tw, ti), ref) < 3e-2


def test_contiguous_layout_from_a_dispatcher_through_the_stand_in(fake_dg):
    spec = MoESpec(num_experts=4, top_k=1, hidden_size=256, intermediate_size=512, quant="fp8_block128",
                   arch="sm90", max_tokens=64)
    plan = host().resolve(spec, force="deepgemm:contiguous")
    weights = random_weights(spec, device="cpu")
    x = torch.randn(11, 256).to(torch.bfloat16)
    offsets = torch.tensor([0, 4, 4, 10, 11])  # an expert without rows
    out = DeepGemmRunner(plan, prepare(plan, weights)).run_contiguous(x, offsets)
    from moe_core.reference.experts import ReferenceRunner
    ref = ReferenceRunner(host().resolve(spec, force="reference:loop"), weights).run_contiguous(x, offsets)
    assert out.shape == x.shape and relative_error(out, ref) < 3e-2


# -- the standard call's path: DeepGemmRunner.uses_masked ---------------------------------
def _runner_for(model, quant, variant="contiguous", **kw):
    """A runner without weights: the path depends on the spec, the variant and T alone."""
    spec = spec_for_model(model, quant=quant, arch="sm90", **kw)
    return DeepGemmRunner(host().resolve(spec, force=f"deepgemm:{variant}"), None)


DSV3_EP8 = ("deepseek-ai/DeepSeek-V3", {"tp": 8, "ep": 8, "rank": 3})  # E_local 32, H 7168, I 2048
QWEN3 = ("Qwen/Qwen3-30B-A3B", {})  # E 128, top-8, H 2048, I 768


@pytest.mark.parametrize("quant", ["bf16", "fp8_block128"])
@pytest.mark.parametrize("model, tokens, masked", [
    (DSV3_EP8, 2048, False),  # 65,536 masked rows vs 20,480 contiguous: 3.2 > 3 (unfused)
    (DSV3_EP8, 512, True),  # 16,384 vs 8,192: 2.0
    (QWEN3, 2048, False), (QWEN3, 1024, False), (QWEN3, 512, False),  # 8.03, 5.36, 3.22
    (DSV3_EP8, 4096, False),  # past MASKED_MAX_TOKENS
    *[(m, t, True) for m in (DSV3_EP8, QWEN3) for t in (1, 4, 64, 128, 256)],  # decode
], ids=str)
def test_the_standard_calls_path_per_shape(fake_dg, quant, model, tokens, masked):
    """The choices the H200 layer_bench (2026-12-01) measured as the faster path."""
    runner = _runner_for(model[0], quant, **model[1])
    s = runner.spec
    assert (s.local_experts, s.top_k) == ((32, 8) if model is DSV3_EP8 else (128, 8))
    assert runner.uses_masked(tokens) is masked


def test_the_fused_activation_keeps_the_masked_path_longer(fake_dg):
    """DeepSeek-V3 EP 8 fp8 at 2048 tokens (ratio 3.2): masked with the fused activation +
    quant (1.576 vs 1.652 ms measured), contiguous without it (2.297 vs 1.876 ms)."""
    fused = _runner_for(DSV3_EP8[0], "fp8_block128", "contiguous_fused", **DSV3_EP8[1])
    assert fused.fused and fused.uses_masked(2048)
    assert not _runner_for(DSV3_EP8[0], "fp8_block128", **DSV3_EP8[1]).uses_masked(2048)


def test_each_rule_of_the_path_choice(fake_dg, monkeypatch):
    import moe_plugin_deepgemm.runner as mod

    dsv3 = _runner_for(DSV3_EP8[0], "bf16", **DSV3_EP8[1])
    monkeypatch.setattr(mod, "MASKED_MAX_TOKENS", 8192)
    monkeypatch.setattr(mod, "MASKED_ROW_RATIO", {True: 4, False: 4})
    # 8192 tokens: 262,144 rows vs 69,632 (3.8) but 9.7 GB of buffers
    assert dsv3.masked_bytes(8192) > mod.MASKED_MAX_BYTES and not dsv3.uses_masked(8192)
    monkeypatch.setattr(mod, "MASKED_MAX_BYTES", 16 << 30)
    assert dsv3.uses_masked(8192)
    monkeypatch.setattr(mod, "MASKED_MAX_BYTES", 3 << 30)
    qwen = _runner_for(QWEN3[0], "bf16")  # at 2048 within the byte cap (2.95 GB): the ratio decides
    assert qwen.masked_bytes(2048) <= mod.MASKED_MAX_BYTES and not qwen.uses_masked(2048)
    monkeypatch.setattr(mod, "MASKED_ROW_RATIO", {True: 9, False: 9})
    assert qwen.uses_masked(2048)
    monkeypatch.setattr(mod, "MASKED_MAX_TOKENS", 2047)
    assert not qwen.uses_masked(2048) and qwen.uses_masked(2047)
    qwen.force_path = "contiguous"
    assert not qwen.uses_masked(1)
    qwen.force_path = "masked"
    assert qwen.uses_masked(1 << 20)
    qwen.force_path = "maskd"
    with pytest.raises(ValueError, match="force_path"):
        qwen.uses_masked(1)


@pytest.mark.parametrize("tokens, path", [(512, "masked"), (640, "contiguous")])
def test_the_standard_call_takes_the_path_uses_masked_picks(fake_dg, tokens, path):
    """8 experts, top-1, unfused (ratio 3): at 512 tokens 8 x 512 masked rows = 4,096 <=
    3 x 1,536 contiguous (masked); at 640, 5,120 > 3 x 1,664 (contiguous)."""
    spec = MoESpec(num_experts=8, top_k=1, hidden_size=128, intermediate_size=128, quant="bf16",
                   arch="sm90", max_tokens=2048)
    plan = host().resolve(spec, force="deepgemm:contiguous")
    weights = random_weights(spec, device="cpu")
    runner = DeepGemmRunner(plan, prepare(plan, weights))
    assert runner.uses_masked(tokens) is (path == "masked")
    x, tw, ti = random_inputs(spec, tokens, device="cpu")
    out = runner(x, tw, ti)
    assert fake_dg.calls and all(c == f"bf16_{path}" for c in fake_dg.calls)
    from moe_core.reference.experts import ReferenceRunner
    ref = ReferenceRunner(host().resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    assert relative_error(out, ref) < 1e-2


def test_masked_buffers_that_are_not_whole_tiles_are_padded(fake_dg):
    spec = MoESpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=512, arch="sm90",
                   quant="fp8_block128", max_tokens=16)
    plan = host().resolve(spec, force="deepgemm:masked_fused")
    weights = random_weights(spec, device="cpu")
    runner = DeepGemmRunner(plan, prepare(plan, weights))
    x = torch.randn(4, 5, 128).to(torch.bfloat16)  # M = 5 rows: the fake asserts whole tiles
    counts = torch.tensor([5, 0, 3, 1])
    out = runner.run_masked(x, counts)
    from moe_core.reference.experts import ReferenceRunner
    ref = ReferenceRunner(host().resolve(spec, force="reference:loop"), weights).run_masked(x, counts)
    valid = torch.arange(5)[None, :] < counts[:, None]  # rows past a count are unspecified
    assert out.shape == x.shape and relative_error(out[valid], ref[valid]) < 3e-2


@pytest.mark.parametrize("model, kw, variant, reason", [
    ("openai/gpt-oss-20b", {}, "contiguous", "weights must be bf16 or fp8_block128, got mxfp4"),
    ("openai/gpt-oss-20b", {"quant": "fp8_block128"}, "contiguous_fused", "expert biases are not supported"),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-FP8", {}, "contiguous", "got fp8_tensor"),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", {"tp": 8}, "contiguous",
     "intermediate per partition 232 is not a multiple of 64"),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", {}, "contiguous", None),  # relu2, bf16: runs
])
def test_scenario_model_declarations(fake_dg, model, kw, variant, reason):
    c = trace(spec_for_model(model, arch="sm90", **kw))[variant]
    if reason is None:
        assert c.status == "chosen"
    else:
        assert reason in c.reason and not c.supported


# -- FP8 tokens kept quantized (#15) ----------------------------------------------------
@pytest.mark.parametrize("a2a, tokens, layout", [
    ("deepep_ll", 128, Layout.MASKED), ("deepep_normal", 4096, Layout.CONTIGUOUS),
    ("torch_a2a", 128, Layout.MASKED), ("torch_a2a", 4096, Layout.CONTIGUOUS)])
def test_fp8_layers_get_the_fp8_tokens_themselves(fake_dg, a2a, tokens, layout):
    spec = MoESpec(num_experts=64, top_k=8, hidden_size=2048, intermediate_size=1024,
                   quant="fp8_block128", arch="sm90", a2a=a2a, tp_size=8, ep_size=8, max_tokens=tokens)
    d = host().resolve(spec, force="deepgemm").dispatch
    assert (d.layout, d.wire, d.deliver_quantized) == (layout, Wire.FP8, True)
    bf16 = host().resolve(spec.replace(quant="bf16"), force="deepgemm").dispatch
    assert bf16.wire is Wire.BF16 and not bf16.deliver_quantized


@pytest.mark.parametrize("variant", ["contiguous", "contiguous_fused", "masked", "masked_fused"])
def test_quantized_entry_points_compute_what_the_bf16_ones_do(fake_dg, variant):
    """FP8 tokens straight into the first GEMM give the bf16 path's output on the same
    (already quantized) tokens, and the first GEMM is handed those very bytes."""
    from moe_core.quant.fp8 import quantize_fp8_blockwise
    from moe_core.runner import dequantize_wire

    spec = MoESpec(num_experts=4, top_k=2, hidden_size=256, intermediate_size=512,
                   quant="fp8_block128", arch="sm90", max_tokens=64)
    plan = host().resolve(spec, force=f"deepgemm:{variant}")
    runner = DeepGemmRunner(plan, prepare(plan, random_weights(spec, device="cpu")))
    gen = torch.Generator().manual_seed(3)
    if variant.startswith("masked"):
        x = torch.randn(4, 100, 256, generator=gen).bfloat16()  # 100 rows: padded to a tile
        counts = torch.tensor([7, 0, 100, 3])
        q, s = quantize_fp8_blockwise(x, 1, 128)
        got = runner.run_masked_quantized((q, s), counts)
        want = runner.run_masked(dequantize_wire((q, s)), counts)
        valid = torch.arange(100)[None, :] < counts[:, None]
        got, want = got[valid], want[valid]
    else:
        x = torch.randn(30, 256, generator=gen).bfloat16()
        offsets = torch.tensor([0, 12, 12, 29, 30])
        q, s = quantize_fp8_blockwise(x, 1, 128)
        got = runner.run_contiguous_quantized((q, s), offsets)
        want = runner.run_contiguous(dequantize_wire((q, s)), offsets)
        assert runner.run_contiguous_quantized((q[:0], s[:0]), torch.zeros(5, dtype=torch.long)).shape == (0, 256)
    assert got.dtype == torch.bfloat16 and relative_error(got, want) < 1e-2
