"""benchmarks/layer_bench.py: its arithmetic on hand-made rows, a CPU --smoke run checked
against numbers computed here (schema, plot, fractions, ratios, weight bytes), and on a
GPU a short run whose every timed row must match the float64 reference."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ceilings  # noqa: E402
import layer_bench as lb  # noqa: E402

from moe_core import MoESpec  # noqa: E402
from moe_core.quant import tolerance  # noqa: E402


def _row(shape="s", quant="bf16", tokens=4, ms=None, contender="c", **kw) -> lb.Row:
    return lb.Row(shape, quant, tokens, tokens * 2, contender, lb.Kind.PEER, ms=ms, **kw)


def test_ratios_are_times_over_the_fastest_of_the_same_shape_dtype_and_tokens():
    rows = [_row(ms=2.0, contender="a"), _row(ms=0.5, contender="b"), _row(ms=None, contender="x", reason="no"),
            _row(tokens=8, ms=3.0, contender="a"), _row(quant="fp8_block128", ms=4.0, contender="a")]
    lb.fill_ratios(rows)
    assert [r.ratio_to_fastest for r in rows] == [4.0, 1.0, None, 1.0, 1.0]


def test_rates_and_fractions_of_the_measured_ceilings():
    c = ceilings.Ceilings("dev", hbm_copy_tbps=4.0, bf16_tflops=800.0, fp8_tflops=1600.0, fp8_scaling="rowwise")
    bf16 = _row(ms=2.0, weight_bytes=6 * 10**9)
    lb.fill_rates(bf16, flops=4 * 10**11, ceil=c)
    assert math.isclose(bf16.tbps, 3.0) and math.isclose(bf16.pct_hbm, 0.75)
    assert math.isclose(bf16.tflops, 200.0) and math.isclose(bf16.pct_matmul, 0.25)
    fp8 = _row(quant="fp8_block128", ms=1.0, weight_bytes=10**9)
    lb.fill_rates(fp8, flops=8 * 10**11, ceil=c)
    assert math.isclose(fp8.pct_matmul, 0.5)  # against the fp8 ceiling, not bf16's
    cpu = ceilings.Ceilings("cpu", hbm_copy_tbps=10.0)
    lb.fill_rates(fp8, flops=8 * 10**11, ceil=cpu)
    assert fp8.pct_matmul is None and math.isclose(fp8.pct_hbm, 0.1)
    # a measured read stream is the ceiling of a layer that streams its weights
    read = ceilings.Ceilings("dev", hbm_copy_tbps=2.0, hbm_read_tbps=4.0)
    lb.fill_rates(bf16, flops=4 * 10**11, ceil=read)
    assert math.isclose(bf16.pct_hbm, 0.75)
    assert ceilings.Ceilings.from_dict(read.to_dict()) == read


def test_weight_bytes_count_each_hit_local_expert_once():
    spec = MoESpec(num_experts=16, top_k=2, hidden_size=128, intermediate_size=64, ep_size=2, tp_size=2,
                   rank=1)  # local experts 8..15
    per_expert = (128 * 128 + 128 * 64) * 2  # bf16 w13 [2I, H] + w2 [H, I]
    ids = torch.tensor([[8, 9], [9, 8], [15, 3], [0, 1]])  # 8, 9, 15 local; 3, 0, 1 elsewhere
    assert lb.touched_weight_bytes(spec, ids) == 3 * per_expert
    assert lb.routed_rows(spec, ids) == 5
    assert lb.layer_flops(spec, 5) == 2 * 5 * 128 * (128 + 64)


def test_routing_is_uniform_distinct_and_a_prefix_across_token_counts():
    spec = MoESpec(num_experts=8, top_k=3, hidden_size=64, intermediate_size=32)
    x, w, ids = lb.routed_inputs(spec, 64, "cpu")
    x4, w4, ids4 = lb.routed_inputs(spec, 4, "cpu")
    assert torch.equal(x[:4], x4) and torch.equal(ids[:4], ids4)
    assert all(len(set(r.tolist())) == 3 for r in ids) and int(ids.min()) >= 0 and int(ids.max()) < 8
    assert torch.allclose(w.sum(-1), torch.ones(64)) and bool(x.abs().sum() > 0)


def test_unknown_shape_or_quant_is_a_usage_error(capsys):
    for argv in (["--shapes", "nope"], ["--quants", "int3"], ["--tokens", "0"]):
        with pytest.raises(SystemExit) as e:
            lb.parse(argv)
        assert e.value.code == 2
    assert "expected some of" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    lb.main(["--smoke", "--tokens", "1,4,16", "--out", str(out)])
    return out, json.loads(out.read_text())


def test_smoke_json_schema_and_plot(smoke):
    out, data = smoke
    assert data["schema"] == lb.SCHEMA and data["env"]["smoke"] is True
    c = data["ceilings"]
    assert c["device"] == "cpu" and c["hbm_copy_tbps"] > 0 and c["bf16_tflops"] is None
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    fields = set(lb.Row("s", "q", 1, 1, "c", lb.Kind.PEER).to_dict())
    assert all(set(r) == fields for r in data["rows"])
    # moe tune ran first; the host row says how its backend was chosen (one runner: priority)
    hosts = [r for r in data["rows"] if r["contender"] == "moe-core (host)"]
    assert hosts and all(r["note"].startswith("chosen by priority") for r in hosts)


def test_the_host_row_follows_measurements():
    """With two runners timed by moe tune, the host row's backend is the faster one."""
    from conftest import host_with, make_plugin
    from moe_core import MoESpec, Variant, Verdict
    from moe_core.reference.experts import ReferenceRunner

    class Slow(ReferenceRunner):
        def __call__(self, x, w, ids):
            import time
            time.sleep(0.02)
            return super().__call__(x, w, ids)

    slow = make_plugin([Variant("slow", 95)], lambda spec: [Verdict.yes("slow")], runner=Slow)
    host = host_with(("slowplug", slow))
    spec = MoESpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64, max_tokens=4)
    assert host.resolve(spec).plugin == "slowplug"  # static priority: the slow one
    tuned = lb.tuned_host(host, {"decode": spec}, {"decode": (4,)}, print)
    plan = tuned.resolve(spec)
    assert plan.plugin == "reference" and plan.selection.by.value == "measurement"


def test_smoke_rows_every_contender_at_every_token_count_with_a_reason_when_not_run(smoke):
    _, data = smoke
    rows = data["rows"]
    for quant in ("bf16", "fp8_block128"):
        by_tokens = {t: {r["contender"] for r in rows if r["quant"] == quant and r["tokens"] == t}
                     for t in (1, 4, 16)}
        assert by_tokens[1] == by_tokens[4] == by_tokens[16]
        names = by_tokens[1]
        assert {"moe-core (host)", "moe-core reference:loop [contiguous]", "moe-core reference:loop [masked]",
                "DeepGEMM direct [contiguous]", "FlashInfer CUTLASS direct", "vLLM Triton (fused_moe_kernel)",
                "transformers grouped_mm", "moe-core reference:grouped_mm"} <= names
    for r in rows:
        assert (r["ms"] is None) == bool(r["reason"]), r
    host = [r for r in rows if r["contender"] == "moe-core (host)"]
    assert len(host) == 6 and all(r["backend"] == "reference:loop" and r["ms"] > 0 for r in host)
    grouped = next(r for r in rows if r["contender"] == "moe-core reference:grouped_mm")
    assert "arch_unsupported" in grouped["reason"]
    tf_fp8 = next(r for r in rows if r["contender"] == "transformers grouped_mm" and r["quant"] == "fp8_block128")
    assert "bf16" in tf_fp8["reason"]


def test_smoke_arithmetic_recomputed_here(smoke):
    _, data = smoke
    hbm = data["ceilings"]["hbm_tbps"]
    shape = lb.SMOKE_SHAPES["tiny-qwen3"]
    _, k, H, I = shape.tiny
    # bf16: w13 [2I, H] + w2 [H, I] at 2 bytes; fp8: 1 byte each, plus fp32 128x128-block
    # scales (w13: 2 halves x 1 x 1 blocks, w2: 1 x 1)
    bytes_per_expert = {"bf16": (2 * I * H + H * I) * 2, "fp8_block128": 2 * I * H + H * I + (2 + 1) * 4}
    timed = [r for r in data["rows"] if r["ms"] is not None]
    assert len(timed) >= 12
    fastest: dict[tuple, float] = {}
    for r in timed:
        key = (r["shape"], r["quant"], r["tokens"])
        fastest[key] = min(fastest.get(key, r["ms"]), r["ms"])
    for r in timed:
        spec = shape.spec(r["quant"], "cpu", 16)
        _, _, ids = lb.routed_inputs(spec, r["tokens"], "cpu")
        assert r["routed_rows"] == r["tokens"] * k
        assert r["weight_bytes"] == len(set(ids.flatten().tolist())) * bytes_per_expert[r["quant"]]
        seconds = r["ms"] / 1e3
        assert math.isclose(r["tbps"], r["weight_bytes"] / seconds / 1e12, rel_tol=1e-9)
        assert math.isclose(r["pct_hbm"], r["tbps"] / hbm, rel_tol=1e-9)
        flops = 2 * r["routed_rows"] * H * (2 * I + I)
        assert math.isclose(r["tflops"], flops / seconds / 1e12, rel_tol=1e-9)
        assert r["pct_matmul"] is None  # no matmul ceiling is measured on a CPU
        assert math.isclose(r["ratio_to_fastest"], r["ms"] / fastest[(r["shape"], r["quant"], r["tokens"])])
        assert r["rel_err"] <= tolerance(r["quant"]), r
        assert r["graphed"] is False and r["timer"] == "wall_clock"
    for key in fastest:
        assert min(r["ratio_to_fastest"] for r in timed if (r["shape"], r["quant"], r["tokens"]) == key) == 1.0


def test_from_json_prints_and_plots_again(smoke, tmp_path, capsys):
    out, data = smoke
    again = tmp_path / "again.json"
    lb.main(["--from-json", str(out), "--out", str(again)])
    text = capsys.readouterr().out
    assert "tiny-qwen3 bf16" in text and "not run" in text
    assert again.with_suffix(".png").is_file()


def test_profile_records_each_timed_rows_ops(tmp_path, capsys):
    data = lb.main(["--smoke", "--tokens", "4", "--quants", "bf16", "--contenders", "host",
                    "--profile", "--out", str(tmp_path / "p.json")])
    timed = [r for r in data["rows"] if r["ms"] is not None]
    assert timed
    for r in timed:
        ks = r["kernels"]
        assert ks and all(k["us"] > 0 and k["launches"] > 0 for k in ks)
        us = [k["us"] for k in ks if k["name"] != "other"]
        assert us == sorted(us, reverse=True)
    assert f"x{timed[0]['kernels'][0]['launches']:g}  {timed[0]['kernels'][0]['name'][:40]}" in capsys.readouterr().out
    assert all(r["kernels"] is None for r in lb.main(["--smoke", "--tokens", "1", "--quants", "bf16",
                                                      "--contenders", "host"])["rows"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: run scripts/gpu_session.sh on the device machine")
def test_gpu_every_timed_row_matches_the_float64_reference(tmp_path):
    out = tmp_path / "gpu.json"
    data = lb.main(["--shapes", "qwen3-30b-a3b", "--tokens", "16,1024", "--out", str(out)])
    c = data["ceilings"]
    assert c["hbm_copy_tbps"] > 1.0 and c["bf16_tflops"] > 100 and c["fp8_tflops"] > c["bf16_tflops"]
    timed = [r for r in data["rows"] if r["ms"] is not None]
    names = {r["contender"] for r in timed}
    assert {"moe-core (host)", "transformers grouped_mm"} <= names, names
    bad = [(r["contender"], r["quant"], r["tokens"], r["rel_err"]) for r in timed if r["rel_err"] > r["tolerance"]]
    assert not bad
    assert any(r["graphed"] for r in timed)
    assert all(r["capture_error"] for r in timed if not r["graphed"] and r["timer"] == "cuda_events")


@pytest.mark.parametrize("tiers, ranges", [
    ((), [(0, 256, (1, 4, 64, 256)), (256, 2048, (512, 2048))]),
    ((64, 512), [(0, 64, (1, 4, 64)), (64, 256, (256,)), (256, 512, (512,)), (512, 2048, (2048,))]),
    ((4096,), [(0, 256, (1, 4, 64, 256)), (256, 2048, (512, 2048))]),  # past the counts: no plan
])
def test_tier_plans_cover_every_count_once_with_the_ranges_transformers_uses(tiers, ranges):
    from moe_core import MoESpec
    from moe_core.integrations.hf_experts import Options

    spec = MoESpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32, max_tokens=2048)
    plans = lb.tier_plans(spec, (1, 4, 64, 256, 512, 2048), tiers)
    assert [(s.min_tokens, s.max_tokens, ts) for s, ts in plans] == ranges
    opts = Options(tiers=tuple(t for t in tiers if t < 2048), max_tokens=2048)
    for s, ts in plans:  # the integration sends each count to the plan of the same range
        assert all(opts.max_tokens_for(t) == s.max_tokens and opts.min_tokens_for(s.max_tokens) == s.min_tokens
                   for t in ts)
