"""The spec: validation names the field and the expected value; derived sizes are right."""

from __future__ import annotations

import dataclasses

import pytest

from moe_core import A2A, Activation, MoESpec, Quant, Regime, SpecError

BASE = dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768)


def spec(**kw):
    return MoESpec(**{**BASE, **kw})


def test_strings_become_enums_and_sizes_derive():
    s = spec(quant="fp8_block128", activation="silu_gated", a2a="deepep_ll", tp_size=8, ep_size=4,
             rank=5, arch="SM90", max_tokens=128)
    assert s.quant is Quant.FP8_BLOCK128 and s.a2a is A2A.DEEPEP_LL and s.arch == "sm90"
    assert (s.moe_tp_size, s.ep_rank, s.moe_tp_rank) == (2, 2, 1)
    assert (s.local_experts, s.first_expert, s.intermediate_per_partition) == (32, 64, 384)
    assert s.w13_rows == 768 and s.sm == 90 and s.is_nvidia and s.token_regime is Regime.DECODE
    assert spec(activation="relu2").w13_rows == 768 and spec(max_tokens=4096).token_regime is Regime.PREFILL


def test_the_derived_regime_follows_replace_and_an_override_sticks():
    decode = spec(max_tokens=64)
    assert decode.replace(max_tokens=4096).token_regime is Regime.PREFILL
    forced = spec(max_tokens=64, regime="prefill")
    assert forced.token_regime is Regime.PREFILL and forced.replace(max_tokens=8).token_regime is Regime.PREFILL


def test_a_tier_spec_names_its_range_and_keeps_the_tuning_key():
    from moe_core.errors import SpecError
    from moe_core.tuning.cache import spec_key

    tier = spec(max_tokens=256, min_tokens=64)
    assert "tokens 65-256 (decode)" in tier.describe() and "tokens<=256" in spec(max_tokens=256).describe()
    assert tier != spec(max_tokens=256) and spec_key(tier) == spec_key(spec(max_tokens=256))
    for bad in (-1, 256, 300, "64", True):
        with pytest.raises(SpecError, match="min_tokens"):
            spec(max_tokens=256, min_tokens=bad)


def test_frozen_hashable_and_model_name_is_display_only():
    a, b = spec(model="A"), spec(model="B")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.top_k = 2


@pytest.mark.parametrize("kw, field, expected", [
    (dict(num_experts=0), "num_experts", "positive integer"),
    (dict(top_k=200), "top_k", "exceeds num_experts 128"),
    (dict(tp_size=8, ep_size=3), "ep_size", "does not divide tp_size 8"),
    (dict(num_experts=60, top_k=4, tp_size=8, ep_size=8), "ep_size", "does not divide num_experts 60"),
    (dict(intermediate_size=7688, tp_size=16), "tp_size", "does not divide intermediate_size 7688"),
    (dict(tp_size=2, rank=2), "rank", "not in [0, tp_size=2)"),
    (dict(quant="int3"), "quant", "not one of: bf16, fp8_block128"),
    (dict(activation="swiglu_limit"), "swiglu_limit", "positive clamp limit"),
    (dict(swiglu_limit=7.0), "swiglu_limit", "only applies to activation 'swiglu_limit'"),
    (dict(arch="h100"), "arch", "expected 'cpu', 'smNN'"),
    (dict(a2a="deepep_normal"), "a2a", "ep_size is 1"),
    (dict(act_dtype="fp64"), "act_dtype", "not one of: bf16, fp16, fp32"),
    (dict(down_gemm_overlap=True), "down_gemm_overlap", "needs sbo=True"),
    (dict(max_tokens=-1), "max_tokens", "positive integer"),
])
def test_bad_fields_name_the_field_and_the_expectation(kw, field, expected):
    with pytest.raises(SpecError) as e:
        spec(**kw)
    assert e.value.field == field and expected in str(e.value)


def test_s2_shape_is_a_valid_spec():
    s = spec(intermediate_size=7688, tp_size=8, quant="fp8_tensor", activation="relu2")
    assert s.intermediate_per_partition == 961


def test_to_dict_is_json_ready():
    import json
    d = spec(activation=Activation.GELU_GATED).to_dict()
    assert json.loads(json.dumps(d))["activation"] == "gelu_gated" and d["local_experts"] == 128
