"""FlashInfer CUTLASS fused MoE on a real GPU (the H100 test machine; docs/results.md).

Each runnable variant against the unpadded reference on real model shapes (experts
sliced), the S2 padded shapes included. The first test compiles the kernels (minutes).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from moe_core import Host, MoESpec, spec_for_model
from moe_core.quant import tolerance
from moe_core.reference.oracle import relative_error
from moe_core.runner import contiguous_layout
from moe_core.synthetic import random_inputs, random_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run "
                       "scripts/gpu_session.sh on the device machine (recorded in docs/results.md)"),
    pytest.mark.skipif(importlib.util.find_spec("flashinfer") is None,
                       reason="flashinfer not importable: scripts/gpu_session.sh carries it to the device"),
]

S2_961 = dict(num_experts=16, top_k=4, hidden_size=4096, intermediate_size=7688, tp_size=8, arch="sm90")
CASES = {  # id: (spec, expected variant, padded intermediate)
    "qwen3-30b-bf16": (spec_for_model("Qwen/Qwen3-30B-A3B", experts=32, arch="sm90"), "bf16", 768),
    "qwen3-30b-fp8": (spec_for_model("Qwen/Qwen3-30B-A3B-FP8", experts=32, arch="sm90"), "fp8_block128", 768),
    "deepseek-v3-tp8-fp8": (spec_for_model("deepseek-ai/DeepSeek-V3", tp=8, experts=16, arch="sm90"),
                            "fp8_block128", 256),
    "deepseek-v3-ep2-bf16": (spec_for_model("deepseek-ai/DeepSeek-V3", quant="bf16", ep=2, tp=2, rank=1,
                                            a2a="torch_a2a", experts=32, arch="sm90"), "bf16", 2048),
    "gpt-oss-20b-bf16": (spec_for_model("openai/gpt-oss-20b", quant="bf16", experts=8, arch="sm90"),
                         "bf16", 2880),
    "nemotron-nano-tp8-S2": (spec_for_model("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", tp=8, experts=16,
                                            arch="sm90"), "bf16", 240),
    "synthetic-961-S2-bf16": (MoESpec(**S2_961), "bf16", 976),
    "synthetic-961-S2-fp8": (MoESpec(**S2_961, quant="fp8_block128"), "fp8_block128", 1024),
}


@pytest.fixture(scope="module")
def host():
    return Host()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tokens", [64, 2048], ids=["decode", "prefill"])
def test_cutlass_matches_the_unpadded_reference(host, case, tokens):
    spec, variant, padded = CASES[case]
    spec = spec.replace(max_tokens=tokens)
    plan = host.resolve(spec, force="flashinfer_cutlass")
    assert str(plan.backend) == f"flashinfer_cutlass:{variant}"
    assert plan.intermediate_padded == padded
    weights = random_weights(spec)
    x, tw, ti = random_inputs(spec, tokens)
    out = host.load(plan, weights)(x, tw, ti)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    err = relative_error(out, ref)
    print(f"\n{plan.backend} {case} I/rank={spec.intermediate_per_partition}->{padded} tokens={tokens}: "
          f"rel err vs reference {err:.2e}")
    assert err < tolerance(spec.quant)


@pytest.mark.parametrize("quant", ["bf16", "fp8_block128"])
def test_contiguous_layout_from_a_dispatcher(host, quant):
    spec = spec_for_model("deepseek-ai/DeepSeek-V3", quant=quant, experts=32, tp=2, ep=2, rank=1,
                          a2a="torch_a2a", arch="sm90", max_tokens=512)
    plan = host.resolve(spec, force="flashinfer_cutlass")
    weights = random_weights(spec)
    x, _, ti = random_inputs(spec, 512)
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    out = host.load(plan, weights).run_contiguous(rows, offsets)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights).run_contiguous(rows, offsets)
    assert relative_error(out, ref) < tolerance(spec.quant)


@pytest.mark.parametrize("case", ["qwen3-30b-bf16", "deepseek-v3-tp8-fp8", "deepseek-v3-ep2-bf16"])
@pytest.mark.parametrize("tokens", [64, 2048], ids=["decode", "prefill"])
def test_a_loaded_layer_captures_in_a_cuda_graph_and_replays(host, case, tokens):
    """graph_safe: FlashInfer's run_moe sizes its workspace from T (through torch's
    allocator) and syncs only in TensorRT-LLM's debug checks, which skip capturing streams."""
    spec, _, _ = CASES[case]
    spec = spec.replace(max_tokens=tokens)
    plan = host.resolve(spec, force="flashinfer_cutlass")
    assert plan.graph_safe
    layer = host.load(plan, random_weights(spec), check_values=False)
    graphed = layer.graphed([tokens], copy_out=False)  # warms up (compiles) outside the capture
    first = graphed(*random_inputs(spec, tokens, seed=1)).clone()
    fresh = random_inputs(spec, tokens, seed=2)
    out = graphed(*fresh)
    torch.cuda.synchronize()
    eager = layer(*fresh)
    err = relative_error(out, eager)
    print(f"\n{plan.backend} {case} T={tokens}: replay vs eager rel err {err:.1e}")
    assert err < 1e-3, "replay differs from an eager call on the same inputs"
    assert not torch.equal(out, first)


def test_the_build_is_recorded_for_explain():
    from moe_plugin_flashinfer_cutlass import build

    for kind in build.KINDS:
        stamp = build.built(kind)
        assert stamp is not None and stamp["kind"] == kind, f"{kind} was not built by the tests above"
        assert build.probe()[build.stamp_fact(kind)] == "yes"  # what a new host reads
        print(f"\n{kind}: {stamp}")
