"""Bad weights and bad runner inputs get errors naming the tensor and the expectation."""

from __future__ import annotations

import pytest
import torch

from conftest import host_with
from moe_core import InputError, MoESpec, WeightsError
from moe_core.synthetic import random_inputs, random_weights

SPEC = MoESpec(num_experts=4, top_k=2, hidden_size=64, intermediate_size=32, quant="fp8_block128",
               max_tokens=16)


@pytest.fixture(scope="module")
def weights():
    return random_weights(SPEC)


@pytest.mark.parametrize("change, message", [
    (lambda w: w.replace(w13=w.w13[:, :10]), r"w13 has shape \(4, 10, 64\); expected \(4, 64, 64\)"),
    (lambda w: w.replace(w2=w.w2.float()), "w2 has dtype float32; expected float8_e4m3fn"),
    (lambda w: w.replace(w13_scale=None), "w13_scale is missing"),
    (lambda w: w.replace(w13_bias=torch.zeros(4, 64)), "w13_bias is set but fp8_block128 weights without bias"),
    (lambda w: w.replace(w2_scale=w.w2_scale.to("meta")), "w2_scale is on meta; expected a cpu tensor"),
    (lambda w: "weights", "expected moe_core.MoEWeights, got str"),
])
def test_bad_weights(weights, change, message):
    with pytest.raises(WeightsError, match=message):
        host_with().load(SPEC, change(weights))


def test_weights_are_never_mutated(weights):
    before = {k: v.clone() for k, v in weights.tensors().items()}
    layer = host_with().load(SPEC, weights)
    layer(*random_inputs(SPEC, 8))
    assert all(torch.equal(before[k].view(torch.uint8), v.view(torch.uint8))
               for k, v in weights.tensors().items())


@pytest.mark.parametrize("call, message", [
    (lambda x, w, i: (x[:, :32], w, i), r"x has shape \(8, 32\); expected 2 dims ending in hidden_size 64"),
    (lambda x, w, i: (x.float(), w, i), "x has dtype torch.float32; the plan's activation dtype is torch.bfloat16"),
    (lambda x, w, i: (x, w, i[:, :1]), r"topk_ids has shape \(8, 1\); expected \(8, 2\)"),
    (lambda x, w, i: (x, w, i.float()), "topk_ids has dtype torch.float32; expected int32 or int64"),
    (lambda x, w, i: (x, w, i + 4), r"topk_ids range \[\d, \d\] is outside \[0, 4\)"),
    (lambda x, w, i: (x.repeat(3, 1), w.repeat(3, 1), i.repeat(3, 1)),
     "x has 24 tokens; the plan was resolved for at most 16"),
    (lambda x, w, i: (x, w.int(), i), "topk_weights has dtype torch.int32; expected a float dtype"),
    (lambda x, w, i: ("x", w, i), "x is str; expected a torch.Tensor"),
])
def test_bad_runner_inputs(weights, call, message):
    layer = host_with().load(SPEC, weights)
    with pytest.raises(InputError, match=message):
        layer(*call(*random_inputs(SPEC, 8)))


def test_bad_masked_and_contiguous_inputs(weights):
    layer = host_with().load(SPEC, weights)
    x = torch.zeros(4, 5, 64, dtype=torch.bfloat16)
    with pytest.raises(InputError, match=r"masked_m values must lie in \[0, 5\]"):
        layer.run_masked(x, torch.tensor([1, 2, 9, 0]))
    with pytest.raises(InputError, match=r"x has shape \(3, 5, 64\); expected \(4, M, H\)"):
        layer.run_masked(x[:3], torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match=r"masked_m has shape \(3,\); expected \(4,\)"):
        layer.run_masked(x, torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="masked_m has dtype torch.float32; expected int32 or int64"):
        layer.run_masked(x, torch.tensor([1, 2.5, 3, 0]))
    with pytest.raises(InputError, match="masked_m is list; expected a torch.Tensor"):
        layer.run_masked(x, [1, 2, 3, 0])
    rows = torch.zeros(6, 64, dtype=torch.bfloat16)
    with pytest.raises(InputError, match="offsets has dtype torch.float32; expected int32 or int64"):
        layer.run_contiguous(rows, torch.tensor([0, 2, 3, 6, 6]).float())
    with pytest.raises(InputError, match="offsets is list; expected a torch.Tensor"):
        layer.run_contiguous(rows, [0, 2, 3, 6, 6])
    with pytest.raises(InputError, match="offsets must rise from 0 to the 6 rows"):
        layer.run_contiguous(torch.zeros(6, 64, dtype=torch.bfloat16), torch.tensor([0, 2, 1, 6, 6]))


# -- what a hostile-input review found (2026-12-07): each was silent or a raw exception ----
@pytest.mark.parametrize("change, field", [
    (dict(has_bias="false"), "has_bias"),  # bool("false") is True: biases silently on
    (dict(sbo="false"), "sbo"),
    (dict(static_input_scale=1), "static_input_scale"),
    (dict(activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=float("nan")), "swiglu_alpha"),
    (dict(activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=-1.0), "swiglu_alpha"),
    (dict(activation="swiglu_limit", swiglu_limit="7"), "swiglu_limit"),
    (dict(activation="swiglu_limit", swiglu_limit=float("inf")), "swiglu_limit"),
])
def test_spec_fields_of_the_wrong_kind_are_refused(change, field):
    from moe_core.errors import SpecError

    with pytest.raises(SpecError) as info:
        MoESpec(num_experts=4, top_k=2, hidden_size=64, intermediate_size=32, **change)
    assert info.value.field == field


def test_spec_arch_auto_detects_as_its_error_message_offers():
    from moe_core.arch import detect_arch

    assert MoESpec(num_experts=4, top_k=2, hidden_size=64, intermediate_size=32,
                   arch="auto").arch == detect_arch()


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, 2.5])
def test_a_hook_timeout_past_the_clock_means_no_limit(monkeypatch, timeout):
    from moe_core import isolation

    monkeypatch.setenv(isolation.ENV_TIMEOUT, str(timeout))
    assert isolation.call(lambda: 7, isolation.timeout_from_env()) == 7
    assert host_with().__class__(hook_timeout=timeout).explain(SPEC).plan is not None


@pytest.mark.parametrize("timeout", [-1, "10", True, float("nan")])
def test_a_bad_hook_timeout_argument_is_refused(timeout):
    from moe_core import Host

    with pytest.raises(InputError, match="hook_timeout=.*expected seconds >= 0"):
        Host(hook_timeout=timeout)


def test_a_tuning_file_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path):
    from moe_core.tuning.cache import read_file

    path = tmp_path / "x.json"
    path.write_bytes(b"\xff\x00\xfe")
    loaded = read_file(path, warn=False)
    assert loaded.entries == {} and len(loaded.problems) == 1 and str(path) in loaded.problems[0]


@pytest.mark.parametrize("content, message", [
    (b"\xff\x00", "unreadable tile table"),
    (b'{"gemms":', "unreadable tile table"),
    (b'{"gemms": {"bf16,N=1,K=2": [1]}}', "expected a mapping of token bucket"),
    (b'{"gemms": {"bf16,N=1,K=2": {"abc": {}}}}', "bucket 'abc': expected a positive token count"),
    (b'{"gemms": {"bf16,N=1,K=2": {"-5": {}}}}', "bucket '-5': expected a positive token count"),
    (b'{"gemms": {"int4,N=1,K=2": {}}}', "gemm key 'int4,N=1,K=2'"),
    (b'{"gemms": {"bf16,N=1,K=2": {"4": {"block_m": 16, "block_n": 16, "block_k": 16, "group_m": 1, '
     b'"num_warps": 1000, "num_stages": 3}}}}', "num_warps=1000: expected a power of two <= 32"),
])
def test_a_corrupt_triton_tile_table_names_its_file(tmp_path, content, message):
    configs = pytest.importorskip("moe_plugin_triton.configs", reason="the triton plugin is not installed")
    (tmp_path / "GPU_X.json").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        configs.ConfigTable.for_device("GPU X", tmp_path)
    assert str(tmp_path / "GPU_X.json") in str(info.value)


def _moe_config(**extra):
    return {"model_type": "qwen3_moe", "hidden_size": 64, "moe_intermediate_size": 32,
            "num_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 2, **extra}


def test_a_top_level_expert_dtype_is_read_without_a_quantization_config():
    from moe_core.errors import ModelConfigError
    from moe_core.hf_config import parse_hf_config
    from moe_core.spec import Quant

    assert parse_hf_config(_moe_config()).quant is Quant.BF16
    assert parse_hf_config(_moe_config(expert_dtype="mxfp4")).quant is Quant.MXFP4
    with pytest.raises(ModelConfigError, match="expert_dtype"):
        parse_hf_config(_moe_config(expert_dtype="int4"))
    with pytest.raises(ModelConfigError, match="expert_dtype"):
        parse_hf_config(_moe_config(expert_dtype=5))


@pytest.mark.parametrize("disable, warned", [
    ("refrence", "no plugin named 'refrence' is installed; did you mean 'reference'"),
    ("reference:nope", "plugin 'reference' has no variant 'nope'"),
    ("some_other_machines_plugin", None),  # one config for many machines: no noise
    ("reference:loop", None),
])
def test_a_disable_typo_warns_in_the_python_api(disable, warned):
    import warnings

    from moe_core.errors import SelectorWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host_with().explain(SPEC, disable=disable)
    got = [str(w.message) for w in caught if issubclass(w.category, SelectorWarning)]
    assert got == ([] if warned is None else [got[0]]) and (warned is None or warned in got[0])


@pytest.mark.parametrize("call, message", [
    (lambda sfm: sfm(None), "model is NoneType; expected a model name"),
    (lambda sfm: sfm("Qwen/Qwen3-30B-A3B", layer="0"), r"layer='0': expected an int"),
])
def test_spec_for_model_argument_types(call, message):
    from moe_core import spec_for_model

    with pytest.raises(InputError, match=message):
        call(spec_for_model)
