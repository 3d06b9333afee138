"""A corpus of malformed variants of real configs: each one through ``moe explain -m
config.json`` either parses (to the values written) or exits 2 naming the key and what was
expected; never a traceback."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from moe_core.cli import main
from moe_core.hf_config import parse_hf_config

# Real configs, trimmed to the fields the parser reads (numbers as published).
BASES = {
    "qwen3": {"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8, "hidden_size": 2048,
              "moe_intermediate_size": 768, "hidden_act": "silu", "norm_topk_prob": True,
              "num_hidden_layers": 48, "decoder_sparse_step": 1, "mlp_only_layers": [],
              "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
    "deepseek": {"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8,
                 "hidden_size": 7168, "moe_intermediate_size": 2048, "n_group": 8, "topk_group": 4,
                 "routed_scaling_factor": 2.5, "n_shared_experts": 1, "scoring_func": "sigmoid",
                 "topk_method": "noaux_tc", "first_k_dense_replace": 3, "moe_layer_freq": 1,
                 "num_hidden_layers": 61, "norm_topk_prob": True, "hidden_act": "silu"},
    "gpt_oss": {"model_type": "gpt_oss", "num_local_experts": 32, "num_experts_per_tok": 4,
                "hidden_size": 2880, "intermediate_size": 2880, "swiglu_limit": 7.0, "num_hidden_layers": 24,
                "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}},
    "llama4": {"model_type": "llama4", "text_config": {
        "model_type": "llama4_text", "num_local_experts": 16, "num_experts_per_tok": 1, "hidden_size": 5120,
        "intermediate_size": 8192, "hidden_act": "silu", "num_hidden_layers": 48, "interleave_moe_layer_step": 1}},
    "nemotron": {"model_type": "nemotron_h", "n_routed_experts": 128, "num_experts_per_tok": 6,
                 "hidden_size": 2688, "moe_intermediate_size": 1856, "mlp_hidden_act": "relu2",
                 "hybrid_override_pattern": "MEMEM*E", "num_hidden_layers": 7, "n_group": 1, "topk_group": 1,
                 "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}},
}
BAD_VALUES = [None, "2048", "２０４８", "", 2048.5, 2048.0, -1, 0, 10 ** 30, True, False, float("nan"),
              float("inf"), -float("inf"), [1, 2], [], {"a": 1}, {}, [[[[[1]]]]], "silu\x00"]


def corpus() -> list[tuple[str, object]]:
    """(label, JSON-able value or raw bytes) for every variant, deterministically."""
    out: list[tuple[str, object]] = []
    for bname, base in BASES.items():
        text = base.get("text_config", base)
        for key in list(text):
            drop = copy.deepcopy(base)
            (drop.get("text_config", drop)).pop(key)
            out.append((f"{bname}-drop-{key}", drop))
            for i, v in enumerate(BAD_VALUES):
                bad = copy.deepcopy(base)
                (bad.get("text_config", bad))[key] = v
                out.append((f"{bname}-{key}-{i}", bad))
        out.append((f"{bname}-nested-deep", {**base, "text_config": json.loads("[" * 50 + "]" * 50)}))
    out += [("array", [BASES["qwen3"]]), ("number", 3), ("string", "config"), ("null", None),
            ("bytes", b"\xff\xfe{\"num_experts\": 8}"), ("deep", b"[" * 100000 + b"]" * 100000),
            ("truncated", json.dumps(BASES["qwen3"])[:40].encode()),
            ("per-layer", {**BASES["qwen3"], "num_hidden_layers": 3, "num_experts": [64, 64, 128],
                           "moe_intermediate_size": [768, 768, 512]}),
            ("per-layer-short", {**BASES["qwen3"], "num_hidden_layers": 3, "num_experts": [64, 128]})]
    return out


CORPUS = corpus()


def _write(tmp_path, label, value):
    path = tmp_path / f"{label}.json"
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        path.write_text(json.dumps(value, ensure_ascii=False, allow_nan=True))
    return path


def test_the_corpus_is_large_and_covers_every_kind():
    assert len(CORPUS) >= 300


def test_every_variant_parses_or_exits_2_naming_the_key(tmp_path):
    runner = CliRunner()
    exits = {0: 0, 2: 0}
    for label, value in CORPUS:
        path = _write(tmp_path, label, value)
        r = runner.invoke(main, ["explain", "-m", str(path), "--arch", "cpu"])
        assert r.exit_code in (0, 2) and (r.exception is None or isinstance(r.exception, SystemExit)), \
            (label, r.exit_code, r.output)
        assert "Traceback" not in r.output, label
        exits[r.exit_code] += 1
        if r.exit_code == 2:
            key = label.split("-")[-2] if label.count("-") >= 2 else None
            msg = r.output.replace("\n", " ")
            assert "error:" in msg and ("expected" in msg or "no such" in msg or "not an MoE config" in msg), \
                (label, msg)
            if key and key in json.dumps(value) and "drop" not in label and "nested" not in label:
                assert key in r.output.replace("\n", ""), (label, msg)  # names the config key
            continue
        if isinstance(value, dict) and "-" in label and not label.startswith(("drop", "per-layer")):
            _check_parsed_value(label, value)
    assert exits[0] >= 30 and exits[2] >= 200, exits


def _check_parsed_value(label: str, value: dict) -> None:
    """A variant that parses gives the numbers written: never a float truncated to an int."""
    cfg = parse_hf_config(value)
    text = value.get("text_config", value) if isinstance(value.get("text_config"), dict) else value
    for key, got in (("hidden_size", cfg.hidden_size), ("num_experts_per_tok", cfg.top_k)):
        if key in text and f"-{key}-" in label:
            assert got == text[key] and isinstance(text[key], int) and not isinstance(text[key], bool), label


def test_decisions_on_floats_booleans_and_lists():
    base = BASES["qwen3"]
    for v in (2048.0, 2048.5, True, "2048"):
        with pytest.raises(ValueError, match=r"hidden_size: got .*; expected an integer"):
            parse_hf_config({**base, "hidden_size": v})
    cfg = parse_hf_config({**base, "num_hidden_layers": 3, "num_experts": [64, 64, 128],
                           "moe_intermediate_size": [768, 768, 512], "mlp_only_layers": [0]})
    assert [(s.index, s.num_experts, s.moe_intermediate_size) for s in cfg.layers] == [(1, 64, 768), (2, 128, 512)]
    with pytest.raises(ValueError, match=r"num_experts: .*one per layer \(3 = num_hidden_layers\)"):
        parse_hf_config({**base, "num_hidden_layers": 3, "num_experts": [64, 128]})


@pytest.mark.parametrize("label", ["qwen3-hidden_size-4", "bytes", "array", "deep", "per-layer"])
def test_a_few_through_a_real_subprocess(tmp_path, label):
    value = dict(CORPUS)[label]
    path = _write(tmp_path, label, value)
    r = subprocess.run([sys.executable, "-m", "moe_core.cli", "explain", "-m", str(path), "--arch", "cpu"],
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr
    assert r.returncode == (0 if label == "per-layer" else 2), r.stderr
    if r.returncode == 2:
        assert "expected" in r.stderr
