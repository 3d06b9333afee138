"""Every MoE family of the installed transformers is matched against its own experts module
(and router where moe-core claims it) or refused by name; the committed table is current; the
bundled catalogue agrees with transformers' modelling code where the family exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the transformers extra is not installed")

from moe_core.hf_config import parse_hf_config  # noqa: E402
from moe_core.integrations.families import check_all, roster  # noqa: E402
from moe_core.models import bundled_models  # noqa: E402

TABLE = Path(__file__).resolve().parent.parent / "docs" / "hf_families.json"


@pytest.fixture(scope="module")
def results():
    return check_all()


def test_every_family_is_matched_or_refused_by_name(results):
    assert len(results) == len(roster()) >= 60
    bad = [(r.family, r.status, r.reason) for r in results if r.status not in ("matched", "refused")]
    assert not bad, bad
    assert sum(r.status == "matched" for r in results) >= 40
    for r in results:
        if r.status == "refused":  # the refusal names a field or module attribute
            assert ": got " in r.reason or ": " in r.reason.split(")", 1)[-1], (r.family, r.reason)
        else:
            assert r.max_error is not None and r.moe_layers and r.experts_modules, r


def test_the_committed_table_is_current(results):
    table = json.loads(TABLE.read_text())
    committed = {f["family"]: (f["status"], f["reason"], f["router"]) for f in table["families"]}
    fresh = {r.family: (r.status, r.reason, r.router) for r in results}
    assert committed == fresh, "docs/hf_families.json is stale: run scripts/hf_families.py"


def test_a_router_moe_core_claims_is_compared_somewhere(results):
    compared = [r.family for r in results if r.router.startswith("matched")]
    assert len(compared) >= 30 and "deepseek_v3" in compared and "ernie4_5_moe" in compared


def _overlay(model_type: str, m) -> dict:
    """transformers' default config of ``model_type`` carrying the bundled record's numbers."""
    from transformers import CONFIG_MAPPING

    d = CONFIG_MAPPING[model_type]().to_dict()
    text = d.get("text_config") if isinstance(d.get("text_config"), dict) else d
    keys = {"num_experts": m.num_experts, "num_local_experts": m.num_experts,
            "n_routed_experts": m.num_experts, "num_experts_per_tok": m.top_k,
            "top_k_experts": m.top_k, "moe_intermediate_size": m.moe_intermediate_size}
    text.update({k: v for k, v in keys.items() if k in text})
    text.update(hidden_size=m.hidden_size, enable_moe_block=True)
    for k, v in (("n_group", m.router.n_group), ("topk_group", m.router.topk_group)):
        if v is not None and k in text:
            text[k] = v
    return d


def _same_router(a, b) -> bool:
    def norm(r):  # one group is no grouping
        kind = "sigmoid_topk_bias" if r.kind == "sigmoid_grouped_topk" and (r.n_group or 1) <= 1 else r.kind
        return kind, r.renormalize
    return norm(a) == norm(b)


@pytest.mark.parametrize("name", list(bundled_models()))
def test_bundled_models_agree_with_transformers(name):
    from transformers import CONFIG_MAPPING

    m = bundled_models()[name]
    if m.model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers has no model_type {m.model_type!r} to check {name} against")
    p = parse_hf_config(_overlay(m.model_type, m), name=m.model_type)
    assert (p.activation, p.swiglu_alpha, p.has_bias) == (m.activation, m.swiglu_alpha, m.has_bias)
    if p.router.known:
        # The record's own norm_topk_prob wins where its config has one; otherwise transformers'.
        if m.model_type in ("qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v2", "nemotron_h"):
            p = parse_hf_config({**_overlay(m.model_type, m), "norm_topk_prob": m.router.renormalize},
                                name=m.model_type)
        assert _same_router(p.router, m.router), (p.router, m.router)
