"""The Triton plugin's declarations, verdicts (by code) and tile configs, on a CPU.

Nothing here imports triton: resolution assumes it installed where a test needs a "yes"
to become a plan.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moe_core import Host, Layout, MoESpec, Quant, Reason, Wire, spec_for_model
from moe_core.environment import assume_installed
from moe_core.registry import Registry
from moe_plugin_triton import constraints, moe_variants, supports_shape
from moe_plugin_triton.configs import (BUCKETS, ConfigTable, TileConfig, bucket, default_config, fit,
                                       gemm_key, layer_configs, table_name)

BASE = dict(num_experts=8, top_k=2, hidden_size=256, intermediate_size=192, arch="sm90")


def verdict(spec, variant):
    (v,) = [v for v in supports_shape(spec) if v.variant == variant]
    return v


def test_importing_the_plugin_imports_neither_torch_nor_triton():
    code = "import sys, moe_plugin_triton; print(sorted(m for m in ('torch', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_variants_are_declared_as_data():
    variants = {v.name: v for v in moe_variants()}
    assert set(variants) == {"bf16", "fp8_block128"}
    for v in variants.values():
        assert v.priority == 22 and v.graph_safe and v.requires == ("triton",)
        assert v.layouts == (Layout.STANDARD, Layout.CONTIGUOUS) and v.summary
    assert variants["bf16"].wire == (Wire.BF16,)
    assert variants["fp8_block128"].wire == (Wire.FP8, Wire.BF16)


@pytest.mark.parametrize("changes, variant, code", [
    (dict(arch="cpu"), "bf16", Reason.ARCH_UNSUPPORTED),
    (dict(arch="gfx942"), "bf16", Reason.ARCH_UNSUPPORTED),
    (dict(arch="sm75"), "bf16", Reason.ARCH_UNSUPPORTED),
    (dict(arch="sm80", quant="fp8_block128"), "fp8_block128", Reason.ARCH_UNSUPPORTED),
    (dict(quant="fp8_block128"), "bf16", Reason.QUANT_UNSUPPORTED),
    (dict(quant="nvfp4"), "fp8_block128", Reason.QUANT_UNSUPPORTED),
    (dict(quant="fp8_tensor"), "fp8_block128", Reason.QUANT_UNSUPPORTED),
    (dict(act_dtype="fp32"), "bf16", Reason.ACT_DTYPE_UNSUPPORTED),
    (dict(act_dtype="fp16", quant="fp8_block128"), "fp8_block128", Reason.ACT_DTYPE_UNSUPPORTED),
    (dict(quant="fp8_block128", hidden_size=200), "fp8_block128", Reason.SHAPE_UNALIGNED),
    (dict(max_tokens=2**28, top_k=8), "bf16", Reason.LIMIT_EXCEEDED),
])
def test_every_no_has_its_code(changes, variant, code):
    v = verdict(MoESpec(**{**BASE, **changes}), variant)
    assert not v.supported and v.code is code and len(v.reason) > 20, v


@pytest.mark.parametrize("changes, variant", [
    (dict(), "bf16"),
    (dict(arch="sm80"), "bf16"),
    (dict(arch="sm89", quant="fp8_block128"), "fp8_block128"),
    (dict(quant="fp8_block128", intermediate_size=160), "fp8_block128"),  # a ragged last group
    (dict(hidden_size=200, intermediate_size=24), "bf16"),  # any size: every tile edge masked
    (dict(activation="relu2"), "bf16"),
    (dict(activation="gelu_gated"), "bf16"),
    (dict(activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=1.702, has_bias=True), "bf16"),
    (dict(activation="swiglu_limit", swiglu_limit=7.0, quant="fp8_block128"), "fp8_block128"),
    (dict(tp_size=4, ep_size=2, rank=3, has_bias=True), "bf16"),
    (dict(tp_size=2, ep_size=2, rank=1, a2a="deepep_normal"), "bf16"),
])
def test_says_yes_to_what_the_kernels_run(changes, variant):
    assert verdict(MoESpec(**{**BASE, **changes}), variant).supported


@pytest.mark.parametrize("model, kwargs, variant", [
    ("deepseek-ai/DeepSeek-V3", dict(tp=8, ep=8, rank=5), "fp8_block128"),
    ("deepseek-ai/DeepSeek-V3", dict(tp=8, ep=8, rank=5, quant="bf16"), "bf16"),
    ("Qwen/Qwen3-30B-A3B", {}, "bf16"),
    ("Qwen/Qwen3-30B-A3B-FP8", dict(tp=2), "fp8_block128"),
    ("openai/gpt-oss-20b", dict(quant="bf16"), "bf16"),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", dict(tp=8), "bf16"),
])
def test_the_issue_shapes_resolve_to_it_on_an_h200(model, kwargs, variant):
    spec = spec_for_model(model, arch="sm90", max_tokens=64, **kwargs)
    host = Host(Registry.discover())
    with assume_installed("triton"):
        plan = host.resolve(spec, force="triton")
    assert str(plan.backend) == f"triton:{variant}" and plan.graph_safe


def test_a_dispatcher_gets_the_standard_layout_and_the_deepep_low_latency_mode_is_declined():
    host = Host(Registry.discover())
    spec = spec_for_model("deepseek-ai/DeepSeek-V3", tp=2, ep=2, rank=1, arch="sm90", max_tokens=128,
                          a2a="deepep_normal")
    with assume_installed("triton"):
        plan = host.resolve(spec, force="triton")
        assert plan.dispatch.layout is Layout.STANDARD and plan.dispatch.wire is Wire.FP8
        ll = host.explain(spec.replace(a2a="deepep_ll"))
    (mine,) = [c for c in ll.candidates if str(c.backend) == "triton:fp8_block128"]
    assert mine.code is Reason.LAYOUT_UNSUPPORTED


def test_without_triton_the_host_says_dependency_missing(monkeypatch):
    from moe_core import environment

    real = environment._probe_module
    gone = environment.Module("triton", False, error="triton not importable: no module named 'triton'")
    monkeypatch.setattr(environment, "_probe_module", lambda name: gone if name == "triton" else real(name))
    res = Host(Registry.discover()).explain(MoESpec(**BASE))
    (mine,) = [c for c in res.candidates if str(c.backend) == "triton:bf16"]
    assert mine.code is Reason.DEPENDENCY_MISSING and "triton not importable" in mine.reason


# -- configs ---------------------------------------------------------------------------

def test_buckets_round_up_and_cap():
    assert [bucket(t) for t in (1, 3, 4, 5, 256, 257, 10**6)] == [1, 4, 4, 8, 256, 512, BUCKETS[-1]]


def test_the_default_rule_grows_tiles_with_rows_per_expert():
    small, large = default_config(1.0, "bf16"), default_config(500.0, "bf16")
    assert small.block_m == 16 and large.block_m == 128 and large.num_warps == 8
    assert default_config(500.0, "fp8_block128").block_k == 128  # whole 128-groups per K step


def test_fit_shrinks_a_pipeline_to_the_shared_memory_limit():
    c = TileConfig(128, 256, 64, 8, 8, 4)
    assert c.shared_bytes("bf16") == 4 * (128 + 256) * 64 * 2
    small = fit(c, "bf16", 99 * 1024)  # an SM86/SM89 block
    assert small.shared_bytes("bf16") <= 99 * 1024 and small.block_m == 128
    assert fit(c, "bf16", None) == c


@pytest.mark.parametrize("bad", [dict(block_m=24), dict(num_warps=0), dict(block_k=8)])
def test_tile_configs_validate(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TileConfig(**{**dict(block_m=16, block_n=64, block_k=128, group_m=1, num_warps=4, num_stages=3), **bad})


def test_a_device_table_overrides_the_rule_and_both_gemms_share_block_m(tmp_path, monkeypatch):
    tuned = TileConfig(32, 128, 128, 4, 4, 5)
    g2 = TileConfig(64, 64, 64, 1, 4, 3)
    data = {"device": "NVIDIA H200", "gemms": {gemm_key("bf16", 1536, 2048): {"8": tuned.to_json()},
                                               gemm_key("bf16", 2048, 768): {"8": g2.to_json()}}}
    (tmp_path / table_name("NVIDIA H200")).write_text(json.dumps(data))
    assert table_name("NVIDIA H200") == "NVIDIA_H200.json"
    monkeypatch.setenv("MOE_TRITON_CONFIGS", str(tmp_path))
    table = ConfigTable.for_device("NVIDIA H200")
    assert table.lookup(5, "bf16", 1536, 2048) == tuned and table.lookup(5, "fp8_block128", 1536, 2048) is None
    # past the largest bucket tuned: the default rule, not decode tiles for a prefill
    assert table.lookup(4096, "bf16", 1536, 2048) is None
    got = layer_configs(table, 5, dtype="bf16", rows_per_expert=5 * 8 / 128, gemm1=(1536, 2048), gemm2=(2048, 768))
    assert got.gemm1 == tuned and got.gemm2.block_m == 32 and got.gemm2.block_n == 64
    assert got.origin == ("tuned", "tuned")
    other = layer_configs(table, 5, dtype="bf16", rows_per_expert=5 * 8 / 128, gemm1=(4096, 7168), gemm2=(7168, 2048))
    assert other.origin == ("default", "default")
    assert "default rule" in ConfigTable.for_device("NVIDIA A100-SXM4-80GB").source


def test_default_rule_reads_the_rows_each_local_expert_gets():
    """Untuned shapes size row tiles by the rows a local expert expects: DeepSeek-V3 under EP 8
    with a dispatcher gets every rank's slots (64 rows an expert at 256 tokens, block_m 64);
    without one every rank runs the same 256 tokens and keeps 1/8 of the slots (8 rows)."""
    dispatched = MoESpec(num_experts=256, top_k=8, hidden_size=7168, intermediate_size=2048,
                         tp_size=8, ep_size=8, a2a="deepep_ll", arch="sm90")
    replicated = dispatched.replace(a2a="none")
    assert dispatched.rows_per_local_expert(256) == 64 and replicated.rows_per_local_expert(256) == 8
    table = ConfigTable({})
    shapes = dict(dtype="bf16", gemm1=(4096, 7168), gemm2=(7168, 2048))
    for spec, block_m in ((dispatched, 64), (replicated, 16)):
        got = layer_configs(table, 256, rows_per_expert=spec.rows_per_local_expert(256), **shapes)
        assert got.gemm1.block_m == got.gemm2.block_m == block_m


@pytest.mark.parametrize("a2a, block_m", [("torch_a2a", 64), ("none", 16)])
def test_the_runner_sizes_its_tiles_by_the_rows_its_experts_get(a2a, block_m):
    """The runner itself (weights off a GPU: the default rule) asks the spec: 64 tokens a rank,
    top-8 over 64 experts at EP 8 are 64 rows an expert with a dispatcher, 8 without."""
    from moe_core.synthetic import random_weights
    from moe_plugin_triton.runner import TritonMoeRunner
    from moe_plugin_triton.weights import prepare

    spec = MoESpec(num_experts=64, top_k=8, hidden_size=256, intermediate_size=128, tp_size=8,
                   ep_size=8, a2a=a2a, arch="sm90", max_tokens=64)
    plan = Host().resolve(spec, force="triton:bf16")
    runner = TritonMoeRunner(plan, prepare(plan, random_weights(spec, device="cpu")))
    assert runner.configs(64).gemm1.block_m == block_m


def test_fp8_steps_never_span_two_scale_groups():
    """The kernel reads one activation/weight scale per K step: block_k 256 would apply one
    scale to two 128-wide groups (silently wrong), so the tiles are narrowed for fp8."""
    from moe_plugin_triton.configs import fit

    wide = TileConfig(16, 64, 256, 1, 4, 3)
    assert fit(wide, "fp8_block128", None).block_k == 128
    assert fit(wide, "bf16", None).block_k == 256


def test_a_malformed_table_names_the_file(tmp_path):
    (tmp_path / "X.json").write_text(json.dumps({"gemms": {"bf16,N=1,K=1": {"1": {"block_m": 16}}}}))
    with pytest.raises(ValueError, match="expected exactly the keys"):
        ConfigTable.for_device("X", tmp_path)


def test_constraints_state_the_fp8_group_once():
    from moe_core.quant.fp8 import ACT_GROUP

    assert constraints.GROUP == ACT_GROUP and constraints.VARIANTS["fp8_block128"][0] is Quant.FP8_BLOCK128
