"""The Triton fused MoE on a real GPU (the H200 test machine): against float64 on the
issue's shapes (experts sliced to keep the oracle quick), edge routings, the contiguous
layout, and CUDA-graph capture/replay against eager calls.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from moe_core import Host, MoESpec, spec_for_model
from moe_core.arch import detect_arch
from moe_core.quant import tolerance
from moe_core.reference.oracle import float64_layer, relative_error
from moe_core.runner import contiguous_layout
from moe_core.synthetic import random_inputs, random_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run on the device machine "
                       "(python -m pytest -m gpu plugins/triton)"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not importable"),
]

NEMOTRON = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"
ARCH = detect_arch()  # sm90 on the H200 ("cpu" here: every test is skipped)
CASES = {  # id: spec
    "deepseek-v3-ep8-fp8": spec_for_model("deepseek-ai/DeepSeek-V3", tp=8, ep=8, rank=3, experts=64, arch=ARCH),
    "deepseek-v3-ep8-bf16": spec_for_model("deepseek-ai/DeepSeek-V3", quant="bf16", tp=8, ep=8, rank=3,
                                           experts=64, arch=ARCH),
    "qwen3-30b-bf16": spec_for_model("Qwen/Qwen3-30B-A3B", experts=32, arch=ARCH),
    "qwen3-30b-fp8-tp2": spec_for_model("Qwen/Qwen3-30B-A3B-FP8", tp=2, rank=1, experts=32, arch=ARCH),
    "gpt-oss-20b-bias-clamp": spec_for_model("openai/gpt-oss-20b", quant="bf16", experts=8, arch=ARCH),
    "nemotron-nano-tp8-relu2": spec_for_model(NEMOTRON, tp=8, experts=32, arch=ARCH),
    "ragged-fp8-I200": MoESpec(num_experts=16, top_k=4, hidden_size=384, intermediate_size=200,
                               quant="fp8_block128", activation="swiglu_limit", swiglu_limit=7.0,
                               arch=ARCH),
    "ragged-bf16-H200-gelu": MoESpec(num_experts=16, top_k=4, hidden_size=200, intermediate_size=72,
                                     activation="gelu_gated", arch=ARCH),
}
TOKENS = [1, 4, 64, 256, 2048]


@pytest.fixture(scope="module")
def host():
    return Host()


@pytest.fixture(scope="module")
def weights():
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = random_weights(CASES[case])
        return cache[case]
    return get


def _load(host, spec, weights, **kw):
    plan = host.resolve(spec, force="triton")
    assert plan.plugin == "triton" and plan.variant == spec.quant.value
    return host.load(plan, weights, **kw)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64(host, weights, case, tokens):
    spec = CASES[case].replace(max_tokens=max(tokens, 1))
    w = weights(case)
    layer = _load(host, spec, w)
    x, tw, ti = random_inputs(spec, tokens, seed=tokens)
    out = layer(x, tw, ti)
    err = relative_error(out, float64_layer(spec, w, x, tw, ti))
    cfg = layer.runner.configs(tokens)
    print(f"\n{case} T={tokens}: rel err {err:.2e}; tiles {cfg.gemm1} / {cfg.gemm2} ({cfg.origin})")
    assert err < tolerance(spec.quant), err


@pytest.mark.parametrize("case", ["qwen3-30b-bf16", "deepseek-v3-ep8-fp8"])
def test_empty_experts_and_one_crowded_expert(host, weights, case):
    """Every token on two experts (one of them this rank's first): the others get nothing,
    and one expert's run spans many blocks."""
    spec = CASES[case].replace(max_tokens=300)
    w = weights(case)
    x, tw, _ = random_inputs(spec, 300, seed=7)
    first = spec.first_expert
    ids = torch.tensor([first, first + 1] + [(first + 5 + i) % spec.num_experts for i in range(spec.top_k - 2)],
                       device=x.device).repeat(300, 1)
    err = relative_error(_load(host, spec, w)(x, tw, ids), float64_layer(spec, w, x, tw, ids))
    assert err < tolerance(spec.quant), err


@pytest.mark.parametrize("case", ["deepseek-v3-ep8-bf16", "deepseek-v3-ep8-fp8"])
def test_no_token_for_this_rank_and_zero_tokens(host, weights, case):
    spec = CASES[case].replace(max_tokens=16)
    layer = _load(host, spec, weights(case))
    x, tw, ti = random_inputs(spec, 16)
    elsewhere = (ti % spec.local_experts + (spec.first_expert + spec.local_experts)) % spec.num_experts
    out = layer(x, tw, elsewhere)  # every slot on another rank's experts: a zero partial sum
    assert out.shape == x.shape and not out.any()
    assert layer(x[:0], tw[:0], ti[:0]).shape == (0, spec.hidden_size)


@pytest.mark.parametrize("case", ["deepseek-v3-ep8-bf16", "deepseek-v3-ep8-fp8", "gpt-oss-20b-bias-clamp"])
def test_contiguous_layout_from_a_dispatcher(host, weights, case):
    spec = CASES[case].replace(max_tokens=512)
    w = weights(case)
    x, _, ti = random_inputs(spec, 512)
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    out = _load(host, spec, w).run_contiguous(rows, offsets)
    ref = host.load(host.resolve(spec, force="reference:loop"), w).run_contiguous(rows, offsets)
    assert relative_error(out, ref) < tolerance(spec.quant)


@pytest.mark.parametrize("tokens", [4, 64, 1000])
@pytest.mark.parametrize("case", ["qwen3-30b-bf16", "deepseek-v3-ep8-fp8", "gpt-oss-20b-bias-clamp"])
def test_a_cuda_graph_replays_what_eager_computes(host, weights, case, tokens):
    spec = CASES[case].replace(max_tokens=tokens)
    layer = _load(host, spec, weights(case), check_values=False)
    assert layer.plan.graph_safe
    graphed = layer.graphed([tokens], copy_out=False)  # warms up (compiles) outside the capture
    for seed in (2, 3):  # new inputs copied into the captured buffers
        new = random_inputs(spec, tokens, seed=seed)
        out = graphed(*new)
        torch.cuda.synchronize()
        eager = layer(*new)
        # Rows are computed independently of where alignment put them: bitwise equal.
        assert torch.equal(out, eager), relative_error(out, eager)


def test_the_tuned_table_of_this_gpu_is_read():
    from moe_plugin_triton.configs import ConfigTable

    table = ConfigTable.for_device(torch.cuda.get_device_name())
    if not table.gemms:
        pytest.skip(f"no tuned table for {torch.cuda.get_device_name()}: {table.source} "
                    "(benchmarks/triton_moe_tune.py writes one)")
    key, per_bucket = next(iter(table.gemms.items()))
    dtype, n, k = key.split(",")
    bucket = min(per_bucket)
    assert table.lookup(bucket, dtype, int(n[2:]), int(k[2:])) == per_bucket[bucket]
