"""The transformers integration in one process: ``experts_implementation="moe_core"`` on tiny
random-weight models of each supported family gives the logits of transformers' own experts
(its MoE blocks are the oracle), weights are processed once per backend and again only when
they change, decode and prefill calls get their own plans, the report is the explain trace,
and classes moe-core cannot run are refused by name."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="the transformers extra is not installed")

from conftest import host_with, make_plugin, one  # noqa: E402
from moe_core import Reason, Regime, Verdict  # noqa: E402
from moe_core.errors import InputError  # noqa: E402
from moe_core.integrations.hf_experts import UnsupportedExperts  # noqa: E402
from moe_core.integrations import transformers as moe_tf  # noqa: E402
from moe_core.integrations.transformers import apply, configure, report, tiny_config  # noqa: E402
from moe_core.reference.oracle import relative_error  # noqa: E402

FAMILIES = ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss"]
#: bf16 weights and activations on both sides; the difference is rounding order.
TOLERANCE = 2e-2


def tiny_model(model_type, dtype=torch.bfloat16, experts_implementation=None, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    kw = {"experts_implementation": experts_implementation} if experts_implementation else {}
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), **kw).to(dtype).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def token_ids(seed=1, shape=(2, 16)):
    return torch.randint(0, 512, shape, generator=torch.Generator().manual_seed(seed))


def counting_reference(calls):
    """A plugin that runs the reference runner and counts its process_weights calls."""
    def process(plan, weights):
        calls.append(plan.spec.max_tokens)
        return weights
    return make_plugin(one("counted", 100), lambda s: [Verdict.yes("counted")], process=process)


def test_importing_moe_core_does_not_import_transformers():
    code = "import sys, moe_core; moe_core.default_host(); print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_moe_core_is_registered_with_transformers_interfaces():
    from transformers.integrations.finegrained_fp8 import ALL_FP8_EXPERTS_FUNCTIONS
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    assert ALL_EXPERTS_FUNCTIONS["moe_core"] is moe_tf.experts_forward
    try:
        from transformers.distributed.expert_parallel import EPImplementationInterface
    except ImportError:  # transformers < 5.2x (e.g. 5.17): no ep_implementation interface
        assert moe_tf.MoECoreEP is None
    else:
        assert EPImplementationInterface()["moe_core"] is moe_tf.MoECoreEP
    # FP8-quantized experts get moe-core's reason, not transformers' KeyError
    fp8 = ALL_FP8_EXPERTS_FUNCTIONS.get_interface("moe_core", None)
    with pytest.raises(InputError, match="FP8-quantized experts are not supported yet"):
        fp8(torch.nn.Module(), None, None, None)


def test_from_pretrained_one_line_matches_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_model("qwen3_moe").save_pretrained(tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16,
                                                experts_implementation="moe_core").eval()
    assert ours.config._experts_implementation == "moe_core"
    ids = token_ids()
    want, got = logits(ref, ids), logits(ours, ids)
    assert 0 < relative_error(got, want) < TOLERANCE
    rep = report(ours)
    assert [r.implementation for r in rep.layers] == ["moe_core"] * 2
    assert all(r.loaded and "reference:loop" in r.loaded[0] for r in rep.layers), rep.summary()


@pytest.mark.parametrize("family", FAMILIES)
def test_set_experts_implementation_keeps_the_logits(family):
    model = tiny_model(family)
    ids = token_ids()
    before = logits(model, ids)
    model.set_experts_implementation("moe_core")
    after = logits(model, ids)
    err = relative_error(after, before)
    assert 0 < err < TOLERANCE, f"{family}: {err:.2e}"  # > 0: moe-core really ran
    rep = report(model)
    per_layer = rep.layer_errors(model, ids)  # each layer vs transformers' eager experts loop
    assert len(per_layer) == 2 and max(per_layer.values()) < TOLERANCE, per_layer
    model.set_experts_implementation("grouped_mm")
    assert torch.equal(logits(model, ids), before)


def test_weights_are_processed_once_and_again_when_they_change():
    calls = []
    model = tiny_model("mixtral", experts_implementation="moe_core")
    configure(model, host=host_with(("counted", counting_reference(calls))))
    ids = token_ids()
    first = logits(model, ids)
    assert len(calls) == 2  # one per layer
    assert torch.equal(logits(model, ids), first) and len(calls) == 2
    experts = model.model.layers[0].mlp.experts
    with torch.no_grad():
        experts.down_proj.mul_(2)  # in place: the version counter moves
    changed = logits(model, ids)
    assert len(calls) == 3 and not torch.equal(changed, first)
    experts.down_proj = torch.nn.Parameter(experts.down_proj.detach().clone())  # a new tensor
    assert torch.equal(logits(model, ids), changed) and len(calls) == 4


def test_decode_and_prefill_calls_get_their_own_plans():
    """A backend that only takes prefill-sized plans runs the long call; the reference the short."""
    calls = []
    prefill_only = make_plugin(one("prefill", 100), lambda s: [
        Verdict.yes("prefill") if s.token_regime is Regime.PREFILL else
        Verdict.no("prefill", Reason.SHAPE_UNSUPPORTED, f"{s.max_tokens} tokens is decode")])
    model = tiny_model("olmoe", experts_implementation="moe_core")
    configure(model, host=host_with(("prefill", prefill_only), ("counted", counting_reference(calls))),
              disable="counted", decode_tokens=8, max_tokens=512)
    logits(model, token_ids(shape=(1, 4)))
    logits(model, token_ids(shape=(2, 20)))
    layer = report(model).layers[0]
    assert {g: str(r.plan.backend) for g, r in layer.resolutions.items()} == {
        "decode": "reference:loop", "prefill": "prefill:prefill"}
    assert len(layer.loaded) == 2 and "tokens<=8 (decode)" in layer.loaded[0]
    assert "prefill:prefill" in layer.loaded[1] and "tokens<=512" in layer.loaded[1]
    declined = [c for c in layer.resolutions["decode"].candidates if c.plugin == "prefill"]
    assert "8 tokens is decode" in declined[0].reason


def test_tiers_give_each_token_range_its_own_plan_on_the_same_weights():
    """With tiers (4,), calls of 1-4 tokens, 5-8 and more each run a plan of their own range; a
    backend that wants ranges above 4 tokens takes the second, and the reference's plans read
    the module's own tensors (no weights held beyond them)."""
    calls = []
    above_4 = make_plugin(one("wide", 100), lambda s: [
        Verdict.yes("wide") if s.min_tokens >= 4 else
        Verdict.no("wide", Reason.SHAPE_UNSUPPORTED, f"range from {s.min_tokens + 1} tokens")])
    model = tiny_model("olmoe", experts_implementation="moe_core")
    before = logits(model, token_ids(shape=(1, 3)))
    opts = configure(model, host=host_with(("wide", above_4), ("counted", counting_reference(calls))),
                     disable="counted", decode_tokens=8, max_tokens=512, tiers=(4,))
    assert opts.plan_max_tokens == (4, 8, 512) and opts.max_tokens_for(5) == 8
    assert [opts.min_tokens_for(m) for m in opts.plan_max_tokens] == [0, 4, 8]
    torch.testing.assert_close(logits(model, token_ids(shape=(1, 3))), before, rtol=2e-2, atol=2e-2)
    logits(model, token_ids(shape=(6, 1)))
    layer = report(model).layers[0]
    assert {g: str(r.plan.backend) for g, r in layer.resolutions.items()} == {
        "decode 1-4": "reference:loop", "decode 5-8": "wide:wide", "prefill": "wide:wide"}
    assert "tokens<=4 (decode)" in layer.loaded[0] and "tokens 5-8 (decode)" in layer.loaded[1]
    assert layer.resolutions["decode 5-8"].spec.min_tokens == 4 and layer.held_bytes == 0
    text = report(model).summary()
    assert "decode 5-8 (tokens 5-8/rank): wide:wide" in text
    # a tier above the decode limit is a prefill plan of its own, named by its range
    configure(model, host=host_with(("wide", above_4)), decode_tokens=8, max_tokens=512, tiers=(4, 64))
    assert list(report(model).layers[0].resolutions) == ["decode 1-4", "decode 5-8", "prefill 9-64", "prefill"]
    configure(model, host=host_with(("wide", above_4)), decode_tokens=8, max_tokens=512)
    assert report(model).layers[0].resolutions["prefill"].spec.min_tokens == 0  # no tiers: as before
    with pytest.raises(InputError, match=r"tiers=\(0,\): expected token counts in \(0, max_tokens"):
        configure(model, tiers=(0,))
    with pytest.raises(InputError, match="tiers='4': expected a positive int"):
        configure(model, tiers="4")


def test_a_layer_that_falls_through_still_matches():
    """A backend that wants intermediate % 128 takes the aligned model and declines the other."""
    strict = make_plugin(one("aligned", 100), lambda s: [
        Verdict.yes("aligned") if s.intermediate_per_partition % 128 == 0 else
        Verdict.no("aligned", Reason.SHAPE_UNALIGNED,
                   f"intermediate {s.intermediate_per_partition} is not a multiple of 128")])
    for inter, backend in ((128, "strict:aligned"), (96, "reference:loop")):
        model = tiny_model("qwen3_moe", intermediate=inter)
        ids = token_ids(seed=2, shape=(1, 12))
        before = logits(model, ids)
        rep = apply(model, host=host_with(("strict", strict)))
        assert {str(r.plan.backend) for r in rep.layers} == {backend}
        if inter == 96:
            declined = [c for c in rep.layers[0].resolution.candidates if c.plugin == "strict"]
            assert "not a multiple of 128" in declined[0].reason
        assert relative_error(logits(model, ids), before) < TOLERANCE


def test_apply_loads_every_layer_and_undo_switches_back():
    model = tiny_model("deepseek_v3")
    ids = token_ids()
    before = logits(model, ids)
    rep = apply(model, host=host_with())
    assert model.config._experts_implementation == "moe_core"
    assert all(len(r.loaded) == 2 for r in rep.layers)  # decode and prefill, before any call
    assert relative_error(logits(model, ids), before) < TOLERANCE
    assert all(len(r.loaded) == 2 for r in report(model).layers)  # the call used the loaded one
    rep.undo()
    assert model.config._experts_implementation == "grouped_mm"
    assert torch.equal(logits(model, ids), before)
    with pytest.raises(InputError, match="undo\\(\\) reverts apply\\(\\)"):
        report(model).undo()


def test_options_are_checked():
    model = tiny_model("mixtral")
    with pytest.raises(InputError, match="a2a='none': expected a mode that moves tokens"):
        configure(model, a2a="none")
    with pytest.raises(InputError, match="expected 0 < decode_tokens <= max_tokens"):
        configure(model, decode_tokens=512, max_tokens=256)
    with pytest.raises(InputError, match="expected 0 < decode_tokens <= max_tokens"):
        configure(model, decode_tokens=0)  # not the default in disguise
    with pytest.raises(InputError, match="decode_tokens='x': expected a positive int"):
        configure(model, decode_tokens="x")
    with pytest.raises(InputError, match="force='refrence': no plugin named 'refrence' is installed"
                                         r".*did you mean 'reference'\?"):
        configure(model, force="refrence")  # at configure, not at the first forward
    with pytest.raises(InputError, match="plugin 'reference' has no variant 'lop'.*did you mean 'loop'"):
        configure(model, force="reference:lop")


def test_two_backends_of_a_non_canonical_module_share_one_canonical_copy():
    """gpt-oss keeps its experts transposed and interleaved: moe-core makes one canonical copy,
    and a second backend that reads it as it is (two tiers) makes none."""
    same = make_plugin(one("wide", 100), lambda s: [
        Verdict.yes("wide") if s.min_tokens >= 4 else
        Verdict.no("wide", Reason.SHAPE_UNSUPPORTED, "small")], process=lambda plan, w: w)
    model = tiny_model("gpt_oss")
    experts = dict(model.named_modules())[report(model).layers[0].name]
    own = sum(p.numel() * p.element_size() for p in experts.parameters())
    configure(model, host=host_with(("wide", same)), decode_tokens=8, max_tokens=512, tiers=(4,))
    layer = report(model, load=True).layers[0]
    assert {str(r.plan.backend) for r in layer.resolutions.values()} == {"reference:loop", "wide:wide"}
    assert own <= layer.held_bytes < 1.5 * own  # one copy (biases as fp32), not two


def test_the_report_is_the_explain_trace():
    model = tiny_model("mixtral", experts_implementation="moe_core")
    rep = report(model)
    d = rep.to_dict()
    assert d["model"] == "MixtralForCausalLM"
    layer = d["layers"][0]
    assert layer["name"].endswith("experts") and layer["module"] == "MixtralExperts"
    assert layer["implementation"] == "moe_core" and layer["sharding"] == {"tp": 1, "ep": 1, "rank": 0}
    assert layer["dispatcher"] == {"decode": None, "prefill": None} and layer["loaded"] == []
    for regime, max_tokens in (("decode", 256), ("prefill", 65536)):
        plan = layer["plans"][regime]
        assert plan["chosen"] and plan["candidates"] and plan["spec"]["num_experts"] == 8
        assert plan["spec"]["max_tokens"] == max_tokens
    text = rep.summary()
    assert "MixtralExperts" in text and "prefill (tokens<=65536/rank): reference:loop" in text


def test_a_dense_model_is_refused_with_its_class_name():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen3", num_hidden_layers=1, hidden_size=64, intermediate_size=64,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=64)
    with pytest.raises(InputError, match="Qwen3ForCausalLM has no MoE experts module"):
        apply(AutoModelForCausalLM.from_config(cfg))


def _identity_gate(self, gate_up):
    return gate_up


def _retype(experts, name, **attrs):
    experts.__class__ = type(name, (type(experts),), attrs)


@pytest.mark.parametrize("name, attrs, flags, match", [
    ("FancyExperts", {"_apply_gate": _identity_gate}, {},
     "FancyExperts\\): _apply_gate: applies its own gate \\(_identity_gate\\), which does not "
     "compute silu_gated"),
    ("NormedExperts", {}, {"has_post_expert_norm": True},
     "NormedExperts\\): has_post_expert_norm: a norm after each expert's down projection"),
    ("UpOnlyExperts", {}, {"has_gate": False},
     "UpOnlyExperts\\): has_gate: declares has_gate=False but holds gate_up_proj"),
    ("BiasedExperts", {}, {"has_bias": True},
     "BiasedExperts\\): has_bias: declares expert biases but holds neither gate_up_proj_bias"),
])
def test_an_experts_class_moe_core_cannot_run_is_named(name, attrs, flags, match):
    model = tiny_model("qwen3_moe")
    experts = model.model.layers[0].mlp.experts
    _retype(experts, name, **attrs)
    experts.__dict__.update(flags)
    with pytest.raises(InputError, match=match):
        apply(model, host=host_with())
    assert model.config._experts_implementation == "grouped_mm"  # nothing switched


def test_a_subclass_with_the_default_gate_runs_from_its_declared_flags():
    model = tiny_model("qwen3_moe")
    ids = token_ids()
    before = logits(model, ids)
    _retype(model.model.layers[0].mlp.experts, "RenamedExperts")
    rep = apply(model, host=host_with())
    assert rep.layers[0].module_class == "RenamedExperts"
    assert relative_error(logits(model, ids), before) < TOLERANCE


def test_an_undecorated_class_is_read_by_its_shapes_or_refused_by_name():
    class PlainExperts(torch.nn.Module):  # no forward(hidden_states, top_k_index, top_k_weights)
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 16, 8))
            self.down_proj = torch.nn.Parameter(torch.zeros(4, 8, 8))

    with pytest.raises(UnsupportedExperts, match="experts \\(PlainExperts\\): forward: forward\\(input\\)"):
        moe_tf.experts_layout(PlainExperts(), "experts")

    class RoutedExperts(PlainExperts):  # [E, H, 2I] (in x out), told by down_proj [E, I, H]
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 12, 16))
            self.down_proj = torch.nn.Parameter(torch.zeros(4, 8, 12))

        def forward(self, hidden_states, top_k_index, top_k_weights):
            raise AssertionError("not called")

    assert moe_tf.experts_layout(RoutedExperts()) == moe_tf.ExpertsLayout(transposed=True)


def test_a_custom_gate_that_computes_the_default_runs():
    """A class's own _apply_gate is checked on a probe, not refused for being its own."""
    def upcast_gate(self, gate_up):  # beam's: the default in fp32
        gate, up = gate_up.chunk(2, dim=-1)
        return (self.act_fn(gate.float()) * up.float()).to(gate.dtype)

    model = tiny_model("qwen3_moe")
    ids = token_ids()
    before = logits(model, ids)
    _retype(model.model.layers[0].mlp.experts, "UpcastExperts", _apply_gate=upcast_gate)
    rep = apply(model, host=host_with())
    assert rep.layers[0].module_class == "UpcastExperts"
    assert relative_error(logits(model, ids), before) < TOLERANCE


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
