"""transformers' own sharding, two processes over gloo, ``experts_implementation="moe_core"``:
expert tensor parallelism (``tp_size=2``) and expert parallelism (``ep_size=2``) with
moe-core's token exchange (``ep_implementation="moe_core"``), transformers' ``all_to_all``
and transformers' ``auto`` (all-reduce over the shared batch). Tiny random bf16 models of
each family; every rank's logits match the single-process transformers model, for a
16-token batch and for one token (the second rank's slice of it is empty)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="the transformers extra is not installed")
pytest.importorskip("accelerate", reason="transformers' distributed loading needs accelerate "
                                         "(requirements-dev.txt installs it)")

import gloo  # noqa: E402
import hf_dist_worker  # noqa: E402

FAMILIES = ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss"]
#: bf16 on both sides; the sharded model also splits attention (TP) and sums in another order.
TOLERANCE = 2e-2
#: case -> who moves the tokens, as the report names it (same in decode and prefill)
DISPATCHER = {"tp2": None, "ep2-moe_core": "torch:all_to_all", "ep2-moe_core-tiers": "torch:all_to_all",
              "ep2-all_to_all": "transformers:all_to_all", "ep2-auto": "transformers:auto"}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_dist")
    paths = hf_dist_worker.save_tiny_models(str(root), FAMILIES)
    gloo.spawn(hf_dist_worker.spawn_entry, 2, paths, str(root))
    return gloo.load_records(root, 2)


def _mine(records, family, case):
    mine = [r for r in records if (r["family"], r["case"]) == (family, case)]
    assert sorted(r["rank"] for r in mine) == [0, 1], mine  # both ranks ran it
    return mine


@pytest.mark.parametrize("case", list(hf_dist_worker.CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_logits_match_the_single_process_model(records, family, case):
    for r in _mine(records, family, case):
        # > 0: the sharded model really computed (attention and experts split, other sums)
        assert 0 < r["error"] < TOLERANCE, r
        assert 0 < r["error_one"] < TOLERANCE, r
        assert r["error_vs_single"] < TOLERANCE and r["error_one_vs_single"] < TOLERANCE, r


@pytest.mark.parametrize("case", list(hf_dist_worker.CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_the_report_names_every_layers_backend_and_dispatcher(records, family, case):
    for r in _mine(records, family, case):
        assert len(r["layers"]) == 2
        tiers = case.endswith("-tiers")  # tiers=(1,): 1 token, 2-256, prefill
        plans = ("decode 1-1", "decode 2-256", "prefill") if tiers else ("decode", "prefill")
        for layer in r["layers"]:
            assert layer["implementation"] == "moe_core"
            assert layer["backend"] == dict.fromkeys(plans, "reference:loop")
            assert layer["dispatcher"] == dict.fromkeys(plans, DISPATCHER[case])
            if case.startswith("ep2"):
                assert layer["sharding"] == f"expert parallel 2 (rank {r['rank']})"
            elif family == "gpt_oss":  # transformers' TP plan leaves gpt-oss's experts whole
                assert layer["sharding"] == "whole"
            else:
                assert layer["sharding"] == f"expert tensor parallel 2 (rank {r['rank']})"
            # the calls ran the decode plan (<= 256 tokens), loaded once; with tiers, the
            # 16-token batch the 2-256 plan and the one token the 1-token plan
            assert len(layer["loaded"]) == 1 + tiers and "(decode)" in layer["loaded"][0], layer
        # one dispatcher serves both layers (same shape), built once (with tiers: one a plan)
        assert r["dispatchers"] == (1 + tiers if case.startswith("ep2-moe_core") else 0), r
        for layer in r["layers"]:
            if case.startswith("ep2-moe_core"):
                assert "DispatchedLayer(reference:loop via torch:all_to_all" in layer["loaded"][0]
                assert "a2a=deepep_ll" in layer["loaded"][0]  # asked for DeepEP, fell through
            elif case == "ep2-all_to_all":  # transformers hands each expert rank one route per row
                assert "top1" in layer["loaded"][0] and "(4 local)" in layer["loaded"][0]


def test_moe_core_token_exchange_needs_moe_core_experts(records):
    refusals = [r for r in records if r["family"] == "refusal"]
    assert len(refusals) == 2
    for r in refusals:
        assert 'load the model with experts_implementation="moe_core" too (got \'grouped_mm\')' in r["error"]
