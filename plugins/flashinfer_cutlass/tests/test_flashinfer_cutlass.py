"""The FlashInfer CUTLASS plugin on a CPU: declarations, scenario S2's padding, the kernel's
weight layout, and the subset build's source surgery (no flashinfer, no GPU needed)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import moe_plugin_flashinfer_cutlass as plugin
from moe_core import (Activation, Environment, Host, Layout, MoESpec, Reason, assume_installed,
                      spec_for_model)
from moe_core.cli import main as cli
from moe_core.registry import Registry
from moe_core.synthetic import random_inputs, random_weights
from moe_plugin_flashinfer_cutlass import build
from moe_plugin_flashinfer_cutlass.constraints import padded_intermediate, verdicts
from moe_plugin_flashinfer_cutlass.weights import canonical, to_kernel


@pytest.fixture
def host():
    reg = Registry.builtin()
    reg.register(plugin, "flashinfer_cutlass")
    return Host(reg)


def _by_name(spec):
    return {v.variant: v for v in verdicts(spec, Environment())}


S2_961 = dict(num_experts=8, top_k=2, hidden_size=256, intermediate_size=7688, tp_size=8)
NANO = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"


# -- declarations -----------------------------------------------------------------------
def test_without_flashinfer_the_host_says_so(host):
    res = host.explain(MoESpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=256, arch="sm90"))
    bf16 = next(c for c in res.candidates if str(c.backend) == "flashinfer_cutlass:bf16")
    assert bf16.code is Reason.DEPENDENCY_MISSING and "flashinfer not importable" in bf16.reason


@pytest.mark.parametrize("quant, variant", [("bf16", "bf16"), ("fp8_block128", "fp8_block128")])
def test_sm90_runs_bf16_and_block_fp8(quant, variant):
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=768, quant=quant, arch="sm90")
    with assume_installed("flashinfer"):
        v = _by_name(spec)
    assert v[variant].supported and "sm90" in v[variant].reason
    assert [n for n, x in v.items() if x.supported] == [variant]
    assert "runs bf16 layers" in v["bf16"].reason or variant == "bf16"


def test_fp8_per_tensor_is_declined_for_its_static_activation_scale():
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=768, quant="fp8_tensor",
                   arch="sm90")
    with assume_installed("flashinfer"):
        why = _by_name(spec)["fp8_tensor"].reason
    assert "static scale" in why and "dynamic" in why


@pytest.mark.parametrize("arch, needle", [("sm90", "needs Blackwell"), ("sm100", "not implemented")])
def test_fp4_paths_are_declared_for_blackwell_only(arch, needle):
    for quant in ("nvfp4", "mxfp4"):
        spec = MoESpec(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=768, quant=quant, arch=arch)
        with assume_installed("flashinfer"):
            v = _by_name(spec)[quant]
        assert not v.supported and needle in v.reason


@pytest.mark.parametrize("changes, needle", [
    (dict(hidden_size=2052), "hidden 2052 is not a multiple of 8"),
    (dict(hidden_size=2056, quant="fp8_block128"), "hidden 2056 is not a multiple of 16"),
    (dict(hidden_size=2064, quant="fp8_block128"), "not a multiple of 128 (fp8 128x128"),
    (dict(activation="gelu_gated"), "erf-based"),
    (dict(act_dtype="fp32"), "bf16 activations"),
    (dict(arch="sm100"), "SM90 (Hopper) only"),
    (dict(has_bias=True, activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=1.702, tp_size=2),
     "every rank would add the down bias"),
])
def test_declines_with_the_rule_it_breaks(changes, needle):
    base = dict(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=768, arch="sm90")
    spec = MoESpec(**{**base, **changes})
    reasons = " | ".join(v.reason for v in verdicts(spec, Environment()))
    assert needle in reasons
    assert not any(v.supported for v in verdicts(spec, Environment()))


@pytest.mark.parametrize("a2a", ["torch_a2a", "deepep_normal"])
def test_a_dispatcher_hands_the_fused_kernel_the_standard_layout(host, a2a):
    """The kernel routes tokens itself: under a dispatcher it is planned with the standard
    layout (received rows and their top-k), never a contiguous layout it would re-permute."""
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=768, arch="sm90",
                   a2a=a2a, ep_size=2, tp_size=2)
    with assume_installed("flashinfer"):
        plan = host.resolve(spec)
    assert plan.plugin == "flashinfer_cutlass" and plan.dispatch.layout is Layout.STANDARD


def test_deepep_low_latency_is_declined_for_its_masked_layout(host):
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=2048, intermediate_size=768, arch="sm90",
                   a2a="deepep_ll", ep_size=2, tp_size=2)
    with assume_installed("flashinfer"):
        res = host.explain(spec)
    bf16 = next(c for c in res.candidates if str(c.backend) == "flashinfer_cutlass:bf16")
    assert bf16.code is Reason.LAYOUT_UNSUPPORTED and "masked layout" in bf16.reason


def test_priority_follows_the_measurements(host):
    """Tokens on the rank: preferred over DeepGEMM's fused variants; dispatched tokens: not."""
    import moe_plugin_deepgemm as deepgemm

    host.registry.register(deepgemm, "deepgemm")
    spec = spec_for_model("deepseek-ai/DeepSeek-V3", tp=1, experts=16, arch="sm90", max_tokens=2048)
    with assume_installed("flashinfer,deep_gemm"):
        assert str(host.resolve(spec).backend) == "flashinfer_cutlass:fp8_block128"
        dispatched = spec.replace(num_experts=32, tp_size=2, ep_size=2, a2a="torch_a2a")
        assert str(host.resolve(dispatched).backend) == "deepgemm:contiguous_fused"


# -- S2: padding ------------------------------------------------------------------------
@pytest.mark.parametrize("spec, padded", [
    (MoESpec(**S2_961, arch="sm90"), 976),
    (MoESpec(**S2_961, quant="fp8_block128", arch="sm90"), 1024),
    (spec_for_model(NANO, tp=8, arch="sm90"), 240),
    (spec_for_model(NANO, tp=4, arch="sm90"), 464),
    (spec_for_model("Qwen/Qwen3-30B-A3B", arch="sm90"), 768),
])
def test_the_plan_records_the_padded_size(host, spec, padded):
    assert padded_intermediate(spec) == padded
    with assume_installed("flashinfer"):
        plan = host.resolve(spec)
    assert plan.plugin == "flashinfer_cutlass" and plan.intermediate_padded == padded
    assert plan.padded == (padded != spec.intermediate_per_partition)
    assert ("zero-padded to" in plan.reason) == plan.padded


def _small(spec, experts=4):
    return spec.replace(num_experts=experts, top_k=min(spec.top_k, 2), hidden_size=256, arch="cpu")


S2_SPECS = {
    "961-silu-bf16": MoESpec(**S2_961),
    "961-silu-fp8": MoESpec(**S2_961, quant="fp8_block128"),
    "232-relu2-nano": _small(spec_for_model(NANO, tp=8)),
    "961-swiglu-bias": MoESpec(**{**S2_961, "tp_size": 8}, activation="swiglu_limit", swiglu_limit=7.0,
                               swiglu_alpha=1.702, has_bias=True, ep_size=8),
}


@pytest.mark.parametrize("name", list(S2_SPECS))
def test_padding_never_changes_the_output(host, name):
    """The padded weights, taken back to canonical order with their zeros kept, give the
    reference the same output as the unpadded weights (the kernel computes on exactly these)."""
    spec = S2_SPECS[name]
    padded = padded_intermediate(spec)
    assert padded > spec.intermediate_per_partition
    weights = random_weights(spec)
    kernel = to_kernel(spec, weights, padded)
    assert kernel.w2.shape[-1] == padded and kernel.w13.shape[-2] == spec.w13_rows // spec.intermediate_per_partition * padded
    wide = spec.replace(intermediate_size=padded * spec.moe_tp_size)
    wide_weights = canonical(wide, kernel, unpad=False)
    if spec.has_bias:  # the kernel adds bf16 biases: compare on the same rounding
        weights = weights.replace(w13_bias=weights.w13_bias.to(torch.bfloat16).float(),
                                  w2_bias=weights.w2_bias.to(torch.bfloat16).float())
        wide_weights = wide_weights.replace(w13_bias=wide_weights.w13_bias.float(),
                                            w2_bias=wide_weights.w2_bias.float())
    x, tw, ti = random_inputs(spec, 24)
    ref = host.load(host.resolve(spec, force="reference:loop"), weights)(x, tw, ti)
    out = host.load(host.resolve(wide, force="reference:loop"), wide_weights)(x, tw, ti)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# -- the kernel's layout ----------------------------------------------------------------
@pytest.mark.parametrize("quant", ["bf16", "fp8_block128"])
def test_kernel_layout_is_up_then_gate_and_inverts_exactly(quant):
    spec = MoESpec(**S2_961, quant=quant)
    weights = random_weights(spec)
    padded = padded_intermediate(spec)
    k = to_kernel(spec, weights, padded)
    I = spec.intermediate_per_partition
    raw = (lambda t: t.view(torch.uint8)) if quant != "bf16" else (lambda t: t)
    assert torch.equal(raw(k.w13[:, :I]), raw(weights.w13[:, I:]))  # up first
    assert torch.equal(raw(k.w13[:, padded:padded + I]), raw(weights.w13[:, :I]))  # gate at +I'
    assert not raw(k.w13[:, I:padded]).any() and not raw(k.w13[:, padded + I:]).any()
    assert not raw(k.w2[..., I:]).any()
    if quant != "bf16":
        half = weights.w13_scale.shape[-2] // 2
        assert torch.equal(k.w13_scale[:, :half], weights.w13_scale[:, half:])
    back = canonical(spec, k)
    for n, t in weights.tensors().items():
        assert torch.equal(raw(back.tensors()[n]), raw(t)), n
    assert weights.w13.shape[-2] == spec.w13_rows  # the caller's tensors are untouched


def test_relu2_has_a_single_half():
    spec = _small(spec_for_model(NANO, tp=8))
    weights = random_weights(spec)
    k = to_kernel(spec, weights, 240)
    assert k.w13.shape[-2] == 240 and torch.equal(k.w13[:, :232], weights.w13)
    assert spec.activation is Activation.RELU2


# -- the subset build --------------------------------------------------------------------
BINDING = """
  template <typename TypeAct, typename TypeWeight, bool NeedQuant = false>
  std::unique_ptr<kernels::CutlassMoeFCRunnerInterface> switch_output_type(DLDataType output_type) {
          return std::make_unique<
              kernels::CutlassMoeFCRunner<TypeAct, TypeWeight, __nv_bfloat16, TypeAct>>();
  }
    if (mActivationDtype == dl_float16 && mWeightDtype == dl_float16) {
      mKernelRunner = std::make_shared<kernels::CutlassMoeFCRunner<half, half>>();
    } else if (mActivationDtype == dl_bfloat16 && mWeightDtype == dl_bfloat16) {
      mKernelRunner = std::make_shared<kernels::CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>>();
    } else if (mActivationDtype == dl_bfloat16 && mWeightDtype == dl_float8_e4m3fn) {
      mKernelRunner = std::make_unique<kernels::CutlassMoeFCRunner<__nv_bfloat16, __nv_fp8_e4m3>>();
    }
"""


@pytest.mark.parametrize("kind, kept", [("bf16", "<__nv_bfloat16, __nv_bfloat16>"),
                                        ("fp8_block128", "<__nv_bfloat16, __nv_fp8_e4m3>")])
def test_the_binding_keeps_only_the_built_runner(kind, kept):
    text, replaced = build.patch_binding(BINDING, kind)
    assert replaced == 3
    assert text.count("CutlassMoeFCRunner<") == 1  # the kept runner alone
    assert f"CutlassMoeFCRunner{kept}>()" in text
    assert text.count("nullptr /* moe-core: not built */") == 3
    assert f"template class CutlassMoeFCRunner{kept};" in build.instantiation_source(kind)


def test_an_unknown_binding_is_refused():
    with pytest.raises(RuntimeError, match="unsupported FlashInfer version"):
        build.patch_binding("no runners here", "bf16")
    with pytest.raises(ValueError, match="unknown build kind 'fp16'"):
        build.module_name("fp16")


def test_explain_says_when_a_build_is_pending(tmp_path, monkeypatch):
    """Build stamps are read once per host (probe_environment) and reach the verdict as a fact."""
    monkeypatch.setenv("MOE_CORE_CACHE", str(tmp_path))

    def note():
        reg = Registry()
        reg.register(plugin, "flashinfer_cutlass")
        env = Host(reg).env
        assert env.fact(build.stamp_fact("bf16")) in ("yes", "no")
        return build.build_note("bf16", env)

    assert "first use compiles the bf16 kernels (measured 2.4 min" in note()
    assert "python -m moe_plugin_flashinfer_cutlass.build bf16" in note()
    library = tmp_path / "lib.so"
    library.write_bytes(b"")
    build.stamp_path("bf16").parent.mkdir(parents=True)
    build.stamp_path("bf16").write_text(json.dumps({"kind": "bf16", "library": str(library)}))
    assert note() is None
    library.unlink()  # a stamp whose library is gone is no build
    assert note() is not None


def test_explain_cli_shows_the_s2_decision(monkeypatch):
    monkeypatch.delenv("MOE_ASSUME_INSTALLED", raising=False)
    r = CliRunner().invoke(cli, ["explain", "-m", NANO, "--tp", "8", "--arch", "sm90",
                                 "--assume-installed", "flashinfer", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["chosen"] == {"plugin": "flashinfer_cutlass", "variant": "bf16"}
    assert out["plan"]["intermediate_padded"] == 240
    reasons = {(c["plugin"], c["variant"]): c["reason"] for c in out["candidates"]}
    assert "intermediate 232 zero-padded to 240 (S2)" in reasons[("flashinfer_cutlass", "bf16")]
