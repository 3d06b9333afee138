"""The transformers integration: tiny random-weight models of each supported family give the
same logits after :func:`apply` as the untouched model (transformers' own MoE blocks are the
oracle), a fall-through layer still matches, and undo restores the model exactly."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the transformers extra is not installed")

from conftest import host_with, make_plugin, one  # noqa: E402
from moe_core import Reason, Verdict  # noqa: E402
from moe_core.errors import InputError  # noqa: E402
from moe_core.integrations.transformers import apply, tiny_config  # noqa: E402
from moe_core.reference.oracle import relative_error  # noqa: E402

FAMILIES = ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss"]
#: bf16 weights and activations on both sides; the difference is rounding order.
TOLERANCE = 2e-2


def tiny_model(model_type, dtype=torch.bfloat16, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides)).to(dtype).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_keeps_the_logits_and_undo_restores_them(family):
    model = tiny_model(family)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    before = logits(model, ids)
    report = apply(model, host=host_with())
    assert len(report.layers) == 2 and all(r.plan is not None for r in report.layers)
    assert "MoECoreExperts" in repr(model)
    after = logits(model, ids)
    err = relative_error(after, before)
    assert err < TOLERANCE, f"{family}: {err:.2e}"
    per_layer = report.layer_errors(model, ids)  # each layer vs transformers' own experts
    assert len(per_layer) == 2 and max(per_layer.values()) < TOLERANCE, per_layer
    assert not torch.equal(after, before)  # the swap really happened
    report.undo()
    assert torch.equal(logits(model, ids), before)


def test_a_layer_that_falls_through_still_matches():
    """A backend that wants intermediate % 128 takes the aligned model and declines the other."""
    strict = make_plugin(one("aligned", 100), lambda s: [
        Verdict.yes("aligned") if s.intermediate_per_partition % 128 == 0 else
        Verdict.no("aligned", Reason.SHAPE_UNALIGNED,
                   f"intermediate {s.intermediate_per_partition} is not a multiple of 128")])
    for inter, backend in ((128, "strict:aligned"), (96, "reference:loop")):
        model = tiny_model("qwen3_moe", intermediate=inter)
        ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(2))
        before = logits(model, ids)
        report = apply(model, host=host_with(("strict", strict)))
        assert {str(r.plan.backend) for r in report.layers} == {backend}
        if inter == 96:
            declined = [c for c in report.layers[0].resolution.candidates if c.plugin == "strict"]
            assert "not a multiple of 128" in declined[0].reason
        assert relative_error(logits(model, ids), before) < TOLERANCE


def test_the_report_is_the_explain_trace():
    model = tiny_model("mixtral")
    report = apply(model, host=host_with())
    d = report.to_dict()
    assert d["model"] == "MixtralForCausalLM"
    layer = d["layers"][0]
    assert layer["name"].endswith("experts") and layer["module"] == "MixtralExperts"
    assert layer["chosen"] and layer["candidates"] and layer["spec"]["num_experts"] == 8
    assert "MixtralExperts" in report.summary()


def test_a_dense_model_is_refused_with_its_class_name():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen3", num_hidden_layers=1, hidden_size=64, intermediate_size=64,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=64)
    with pytest.raises(InputError, match="Qwen3ForCausalLM has no MoE experts module"):
        apply(AutoModelForCausalLM.from_config(cfg))


def test_experts_moe_core_cannot_run_are_refused_by_the_feature():
    """The layout is read from the module's flags; one moe-core does not compute is named."""
    model = tiny_model("qwen3_moe")
    experts = model.model.layers[0].mlp.experts
    experts.__class__ = type("FancyExperts", (type(experts),), {})
    experts.has_post_expert_norm = True
    with pytest.raises(InputError, match="FancyExperts.*has_post_expert_norm: a norm after each"):
        apply(model, host=host_with())


def test_sharding_is_refused_with_the_reason():
    with pytest.raises(InputError, match="tp=1, ep=1"):
        apply(tiny_model("mixtral"), tp=2)


def test_moe_hf_runs_a_bundled_family_and_refuses_an_untested_one():
    import json

    from click.testing import CliRunner

    from moe_core.cli import main

    r = CliRunner().invoke(main, ["hf", "-m", "mistralai/Mixtral-8x7B-v0.1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["model_type"] == "mixtral" and len(out["layers"]) == 2
    assert max(out["layer_rel_errors"].values()) < TOLERANCE
    r = CliRunner().invoke(main, ["hf", "-m", "meta-llama/Llama-4-Scout-17B-16E-Instruct"])
    assert r.exit_code == 2 and "'llama4' is not a family this integration covers" in r.output
