"""benchmarks/transformers_bench.py on the CPU (its --device cpu smoke run): every row is
timed or says why not, moe_core's logits match grouped_mm's, and with tuning (the default)
the moe_core rows resolve through a host that read `moe tune`'s measurements."""

from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))


@pytest.mark.parametrize("tune", [True, False])
def test_the_cpu_smoke_run_times_every_implementation(tmp_path, capsys, monkeypatch, tune):
    import transformers_bench as tb

    monkeypatch.setenv("MOE_TUNING", "0")  # no user cache: untuned means the static order

    out = tmp_path / "tf.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--decode", "1,4", "--prefill", "16",
            "--impls", "grouped_mm,moe_core", "--out", str(out)] + ([] if tune else ["--no-tune"])
    tb.main(argv)
    printed = capsys.readouterr().out
    assert ("moe tune: 1 layer spec(s), buckets [1, 4, 16, 256]" in printed) is tune
    rows = json.loads(out.read_text())["results"][0]["rows"]
    assert {(r["impl"], r["tokens"]) for r in rows} == {(i, t) for i in ("grouped_mm", "moe_core")
                                                        for t in (1, 4, 16)}
    ours = [r for r in rows if r["impl"] == "moe_core"]
    assert all(r["ms"] > 0 and r["rel_err"] < 1e-2 for r in ours), ours
    # On a CPU: wall-clock samples, no graph tried, so no capture error to report.
    assert all(r["graphed"] is False and r["capture_error"] is None for r in rows), rows
    plans = ours[0]["plans"]
    assert all(r["plans"] == plans for r in ours) and plans["decode"] == ["reference:loop"]
    assert plans["from_measurements"] is tune  # the layers resolved through the tuned host


def test_tiers_reach_the_model_and_the_tuning(tmp_path, capsys, monkeypatch):
    """--tiers 2: the tuning measures the boundary and the moe_core rows run a plan per range."""
    import transformers_bench as tb

    monkeypatch.setenv("MOE_TUNING", "0")
    out = tmp_path / "tf.json"
    tb.main(["--preset", "tiny", "--device", "cpu", "--decode", "1,4", "--prefill", "16",
             "--impls", "moe_core", "--tiers", "2", "--out", str(out)])
    assert "buckets [1, 2, 4, 16, 256]" in capsys.readouterr().out
    plans = json.loads(out.read_text())["results"][0]["rows"][0]["plans"]
    assert {"decode 1-2", "decode 3-256", "prefill"} <= set(plans)
    with pytest.raises(SystemExit):
        tb.main(["--preset", "tiny", "--device", "cpu", "--tiers", "x"])
