"""The bundled catalogue and Hugging Face config.json parsing."""

from __future__ import annotations

import json

import pytest

from moe_core import ModelConfigError, Quant, SpecError, UnknownModelError, bundled_models, spec_for_model
from moe_core.models import find_model, load_model_config, parse_hf_config


def test_catalogue_ships_every_model_as_package_data():
    models = bundled_models()
    assert len(models) == 45
    ds = models["deepseek-ai/DeepSeek-V3"]
    assert (ds.num_experts, ds.top_k, ds.hidden_size, ds.moe_intermediate_size) == (256, 8, 7168, 2048)
    assert ds.router.kind == "sigmoid_grouped_topk" and ds.router.n_group == 8
    oss = models["openai/gpt-oss-20b"]
    assert oss.swiglu_limit == 7.0 and oss.swiglu_alpha == 1.702 and oss.has_bias
    assert models["nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-NVFP4"].expert_hidden == 1024


def test_every_bundled_model_gives_a_valid_spec_at_tp1():
    for name in bundled_models():
        s = spec_for_model(name, arch="cpu")
        assert s.num_experts >= s.top_k and s.model == name


def test_lookup_by_short_name_case_insensitive_and_suggestions():
    assert find_model("qwen3-30b-a3b-fp8").name == "Qwen/Qwen3-30B-A3B-FP8"
    with pytest.raises(UnknownModelError) as e:
        find_model("Qwen3-30B-A3B-FP9")
    assert "Qwen/Qwen3-30B-A3B-FP8" in e.value.suggestions and "did you mean" in str(e.value)


def test_tp_and_ep_that_do_not_divide_are_spec_errors():
    with pytest.raises(SpecError, match="does not divide intermediate_size 768"):
        spec_for_model("Qwen/Qwen3-30B-A3B", tp=5, arch="cpu")
    with pytest.raises(SpecError, match="does not divide num_experts 60"):
        spec_for_model("Qwen/Qwen1.5-MoE-A2.7B", tp=8, ep=8, arch="cpu")


def test_quant_override_and_expert_slice():
    s = spec_for_model("deepseek-ai/DeepSeek-V3", quant="bf16", experts=16, tp=4, ep=2, arch="sm90")
    assert s.quant is Quant.BF16 and s.num_experts == 16 and s.local_experts == 8
    assert s.intermediate_per_partition == 1024


HF = {
    "qwen3": ({"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8,
               "hidden_size": 2048, "moe_intermediate_size": 768, "hidden_act": "silu",
               "norm_topk_prob": True,
               "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
              dict(num_experts=128, quant=Quant.FP8_BLOCK128, router="softmax_topk")),
    "mixtral": ({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2,
                 "hidden_size": 4096, "intermediate_size": 14336, "hidden_act": "silu"},
                dict(num_experts=8, moe_intermediate_size=14336, quant=Quant.BF16)),
    "deepseek": ({"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8,
                  "hidden_size": 7168, "moe_intermediate_size": 2048, "n_group": 8, "topk_group": 4,
                  "routed_scaling_factor": 2.5, "n_shared_experts": 1, "scoring_func": "sigmoid"},
                 dict(router="sigmoid_grouped_topk", num_shared_experts=1)),
    "gpt_oss": ({"model_type": "gpt_oss", "num_local_experts": 32, "num_experts_per_tok": 4,
                 "hidden_size": 2880, "intermediate_size": 2880, "swiglu_limit": 7.0,
                 "quantization_config": {"quant_method": "mxfp4"}},
                dict(activation="swiglu_limit", swiglu_limit=7.0, swiglu_alpha=1.702, has_bias=True,
                     quant=Quant.MXFP4)),
    "nemotron": ({"model_type": "nemotron_h", "n_routed_experts": 128, "num_experts_per_tok": 6,
                  "hidden_size": 2688, "moe_intermediate_size": 1856, "mlp_hidden_act": "relu2",
                  "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}},
                 dict(activation="relu2", quant=Quant.NVFP4)),
    "llama4_nested": ({"model_type": "llama4", "text_config": {
                           "model_type": "llama4_text", "num_local_experts": 16,
                           "num_experts_per_tok": 1, "hidden_size": 5120, "intermediate_size": 8192,
                           "hidden_act": "silu"}},
                      dict(num_experts=16, top_k=1)),
}


@pytest.mark.parametrize("name", list(HF))
def test_hf_config_parsing(name, tmp_path):
    config, expected = HF[name]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    for source in (path, tmp_path):  # the file or its folder
        cfg = load_model_config(source)
        for field, value in expected.items():
            got = getattr(cfg, field)
            got = got.kind if field == "router" else got
            assert got == value, (field, got, value)


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008},
     "not an MoE config (no num_experts, num_experts_per_tok"),
    ({**HF["mixtral"][0], "hidden_act": "tanh"}, "hidden_act: got 'tanh'; expected one of"),
    ({**HF["mixtral"][0], "quantization_config": {"quant_method": "gptq", "bits": 4}},
     "quantization_config.quant_method: got 'gptq'; expected fp8, compressed-tensors"),
])
def test_bad_hf_configs_say_what_is_wrong(config, message):
    with pytest.raises(ModelConfigError, match=message.replace("(", r"\(")):
        parse_hf_config(config)


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(ModelConfigError, match="no such config.json"):
        load_model_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        load_model_config(bad)
