"""The layer benchmark's peers (benchmarks/peers/): vLLM's Triton kernel loaded from its file
and driven by our code (CPU: the loader, the config rules, and the real kernel in Triton's
interpreter in fp32; GPU: bf16 and fp8 against the float64 reference), and transformers'
experts modules holding our weights."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from peers import PeerUnavailable  # noqa: E402
from peers import transformers_experts as tf  # noqa: E402
from peers import vllm_triton as vt  # noqa: E402

from moe_core import MoESpec, spec_for_model  # noqa: E402
from moe_core.integrations.hf_experts import canonical_weights, experts_layout  # noqa: E402
from moe_core.models import find_model  # noqa: E402
from moe_core.quant import tolerance  # noqa: E402
from moe_core.reference.oracle import float64_layer, relative_error  # noqa: E402
from moe_core.synthetic import random_inputs, random_weights  # noqa: E402

VLLM = vt.VllmSource(vt.DEFAULT_ROOT)
NEEDS_VLLM = pytest.mark.skipif(not VLLM.kernel_file.is_file(),
                                reason="vLLM's fused_moe.py is not extracted: run scripts/fetch_vllm.sh")

SOURCE = textwrap.dedent('''\
    import triton
    import triton.language as tl

    @triton.jit
    def helper(x):
        return x + 1

    @triton.jit
    def unused(x):
        return x

    def host_side(x):
        return x

    @triton.jit
    def fused_moe_kernel(p):
        y = helper(tl.load(p))
        tl.store(p, y)
    ''')


def test_the_kernel_and_the_jit_helpers_it_calls_are_taken_nothing_else():
    assert [f.name for f in vt.kernel_functions(SOURCE)] == ["helper", "fused_moe_kernel"]
    text = vt.kernel_module_text(SOURCE)
    lines, original = text.splitlines(), SOURCE.splitlines()
    assert len(lines) == len(original)
    kept = {i for i, line in enumerate(lines) if line.strip()}
    assert {original[i] for i in kept} == {line for line in original[3:6] + original[14:18] if line}
    assert "import" not in text and "unused" not in text and "host_side" not in text
    with pytest.raises(ValueError, match="no function 'fused_moe_kernel'"):
        vt.kernel_functions(SOURCE.replace("def fused_moe_kernel", "def other_kernel"))
    with pytest.raises(ValueError, match="not decorated"):
        vt.kernel_functions(SOURCE.replace("@triton.jit\ndef fused_moe_kernel", "def fused_moe_kernel"))


def test_a_missing_extraction_names_the_script(tmp_path):
    with pytest.raises(PeerUnavailable, match="scripts/fetch_vllm.sh"):
        vt.VllmSource.find(tmp_path)


def test_config_file_names_and_the_nearest_m_key_as_vllm_picks_them(tmp_path):
    assert vt.device_file_name("NVIDIA H200 NVL") == "NVIDIA_H200"
    assert vt.device_file_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"
    assert vt.config_file_name(32, 2048, "fp8_w8a8", (128, 128), "NVIDIA_H200") == \
        "E=32,N=2048,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json"
    assert vt.config_file_name(128, 768, None, None, "NVIDIA_H200") == "E=128,N=768,device_name=NVIDIA_H200.json"
    name = vt.config_file_name(8, 64, None, None, "NVIDIA_H200")
    (tmp_path / name).write_text(json.dumps({"triton_version": "3.4.0", "1": {"BLOCK_SIZE_M": 16},
                                             "64": {"BLOCK_SIZE_M": 64}, "256": {"BLOCK_SIZE_M": 128}}))
    pick = lambda M: vt.pick_config(tmp_path, M=M, E=8, N=64, dtype=None, block_shape=None,  # noqa: E731
                                    device="NVIDIA_H200")
    assert [pick(M).get()["BLOCK_SIZE_M"] for M in (1, 30, 40, 100, 200, 4096)] == [16, 16, 64, 64, 128, 128]
    assert "at M=64" in pick(40).source
    assert "default rule" in vt.pick_config(tmp_path, M=4, E=16, N=64, dtype=None, block_shape=None,
                                            device="NVIDIA_H200").source


def test_default_rule_restates_vllm_get_default_config():
    cfg = vt.default_config
    keys = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")

    def t(c):
        return tuple(c[k] for k in keys)
    assert t(cfg(1, 32, None, None)) == (16, 64, 128, 1, 4, 4)
    assert t(cfg(64, 32, None, None)) == (32, 64, 128, 1, 4, 3)
    assert t(cfg(200, 32, None, None)) == (64, 128, 64, 1, 8, 3)
    assert t(cfg(8192, 32, None, None)) == (128, 128, 64, 16, 8, 3)
    assert t(cfg(4, 32, "fp8_w8a8", (128, 128))) == (16, 64, 128, 1, 4, 4)
    assert t(cfg(8, 32, "fp8_w8a8", (128, 128))) == (16, 64, 128, 1, 4, 3)
    assert t(cfg(100, 32, "fp8_w8a8", (128, 128))) == (64, 128, 128, 32, 4, 3)


def test_shapes_the_driver_cannot_run_say_why():
    gpt = spec_for_model("openai/gpt-oss-20b", quant="fp8_block128", arch="cpu")
    assert "divisible by 128" in vt.why_not(gpt)
    assert "bf16 and fp8_block128 only" in vt.why_not(gpt.replace(quant="nvfp4"))
    assert vt.why_not(gpt.replace(quant="bf16")) is None


INTERPRETED = '''
import json, sys
sys.path[:0] = [{tests!r}, {bench!r}]
from moe_core.kernels import enable_interpreter
enable_interpreter()
from peers.vllm_triton import VllmTritonMoE
from moe_core import MoESpec
from moe_core.synthetic import random_inputs, random_weights
from moe_core.reference.oracle import float64_layer, relative_error
out = []
for act, bias, tokens in [("silu_gated", False, 40), ("swiglu_limit", True, 3), ("relu2", False, 1)]:
    kw = dict(swiglu_limit=7.0, swiglu_alpha=1.702) if act == "swiglu_limit" else {{}}
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32, activation=act,
                   has_bias=bias, act_dtype="fp32", **kw)
    w = random_weights(spec)
    w32 = w.replace(**{{n: t.float() for n, t in w.tensors().items()}})  # bf16 tl.dot: wrong in the interpreter
    x, tw, ti = random_inputs(spec, tokens)
    layer = VllmTritonMoE(spec, w32)
    got = layer(x.float(), tw, ti)
    out.append([act, tokens, layer.naive(tokens), relative_error(got, float64_layer(spec, w, x, tw, ti))])
# fp8 128x128 blocks with 1x128 activation groups (fp8 operands run in the interpreter)
spec = MoESpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128, quant="fp8_block128")
w = random_weights(spec)
x, tw, ti = random_inputs(spec, 40)
got = VllmTritonMoE(spec, w)(x, tw, ti)
out.append(["fp8_block128", 40, False, relative_error(got, float64_layer(spec, w, x, tw, ti))])
print(json.dumps(out))
'''


@NEEDS_VLLM
def test_vllm_kernel_in_the_triton_interpreter_matches_float64():
    pytest.importorskip("triton", reason="triton is not installed (requirements-dev.txt names the versions)")
    code = INTERPRETED.format(tests=str(ROOT / "tests"), bench=str(ROOT / "benchmarks"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r[2] for r in results] == [False, False, True, False]  # aligned, aligned, vLLM's sparse path
    for act, tokens, _, err in results[:3]:
        assert err < 1e-5, (act, tokens, err)
    # the kernel's bf16 intermediate is re-quantized (the float64 reference quantizes exact values)
    assert results[3][3] < 3e-2, results[3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: run scripts/gpu_session.sh on the device machine")
@NEEDS_VLLM
@pytest.mark.parametrize("model, quant, tp, experts", [
    ("Qwen/Qwen3-30B-A3B", "bf16", 1, None), ("Qwen/Qwen3-30B-A3B", "fp8_block128", 1, None),
    ("deepseek-ai/DeepSeek-V3", "fp8_block128", 1, 32), ("openai/gpt-oss-20b", "bf16", 1, None),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "bf16", 8, None)])
def test_gpu_vllm_kernel_matches_float64(model, quant, tp, experts):
    spec = spec_for_model(model, quant=quant, tp=tp, experts=experts, arch="auto", max_tokens=2048)
    weights = random_weights(spec)
    layer = vt.VllmTritonMoE(spec, weights, VLLM)
    for tokens in (1, 64, 2048):  # vLLM's sparse path, then tuned or default tiles
        x, tw, ti = random_inputs(spec, tokens)
        out = layer(x, tw, ti)
        n = min(tokens, 64)
        err = relative_error(out[:n], float64_layer(spec, weights, x[:n], tw[:n], ti[:n]))
        assert err <= tolerance(spec.quant), (tokens, layer.describe(tokens), err)
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("model, tp", [("Qwen/Qwen3-30B-A3B", 1), ("openai/gpt-oss-20b", 1),
                                       ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 8),
                                       ("deepseek-ai/DeepSeek-V3", 1)])
def test_transformers_experts_module_holds_our_weights_and_computes_the_layer(model, tp):
    cfg = find_model(model)
    spec = spec_for_model(cfg, quant="bf16", tp=tp, experts=8, arch="cpu").replace(
        hidden_size=128, intermediate_size=64 * tp)
    weights = random_weights(spec)
    module = tf.build_module(cfg.model_type, spec, weights)
    back = canonical_weights(module, experts_layout(module))
    assert torch.equal(back.w13, weights.w13) and torch.equal(back.w2, weights.w2)
    x, tw, ti = random_inputs(spec, 5)
    want = float64_layer(spec, weights, x, tw, ti)
    for impl in ("grouped_mm", "batched_mm"):
        assert relative_error(tf.experts_call(impl, module)(x, tw, ti), want) < 1e-2, impl


def test_transformers_peer_refuses_what_it_does_not_compute():
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64)
    with pytest.raises(PeerUnavailable, match="bias"):  # gpt-oss experts add biases
        tf.build_module("gpt_oss", spec, random_weights(spec))
    with pytest.raises(PeerUnavailable, match="run bf16 weights"):
        fp8 = spec.replace(quant="fp8_block128")
        tf.build_module("qwen3_moe", fp8, random_weights(fp8))
    with pytest.raises(PeerUnavailable, match="no transformers.models.not_a_family"):
        tf.experts_class("not_a_family")


FAKE_DG = ROOT / "plugins" / "deepgemm" / "tests" / "fake_deep_gemm"


@pytest.fixture
def stand_in_deep_gemm(monkeypatch):
    """``deep_gemm`` importable as the plugin's CPU stand-in, for one test."""
    monkeypatch.syspath_prepend(str(FAKE_DG))
    monkeypatch.delitem(sys.modules, "deep_gemm", raising=False)
    yield
    sys.modules.pop("deep_gemm", None)


# (the fused activation + FP8 quant is declared for fp8 layers only)
@pytest.mark.parametrize("quant,fused", [("bf16", False), ("fp8_block128", False), ("fp8_block128", True)])
def test_deepgemm_direct_peer_matches_float64_through_the_stand_in(stand_in_deep_gemm, quant, fused):
    """The "DeepGEMM direct" rows: both layouts, through the stand-in deep_gemm (which checks
    DeepGEMM's argument rules), with the plugin's activation step, give the layer's output."""
    from peers.direct import DeepGemmDirect

    spec = MoESpec(num_experts=4, top_k=2, hidden_size=256, intermediate_size=512, quant=quant,
                   arch="sm90", max_tokens=16)
    weights = random_weights(spec, device="cpu")
    from moe_plugin_deepgemm.weights import prepare  # noqa: E402 - after the stand-in is on the path
    from moe_core import Host

    plan = Host().resolve(spec, force=f"deepgemm:contiguous{'_fused' if fused else ''}")
    peer = DeepGemmDirect(spec, prepare(plan, weights), fused=fused)
    x, tw, ti = random_inputs(spec, 9, device="cpu")
    want = float64_layer(spec, weights, x, tw, ti)
    for layout in ("contiguous", "masked"):
        p = getattr(peer, layout)(x, tw, ti)
        err = relative_error(p.to_tokens(p.call()), want)
        assert err < tolerance(quant), (layout, err)
