"""What the `moe` CLI shows a person: README examples that show real backends on a laptop,
output that does not wrap when piped, and progress while `moe run` works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from moe_core.cli import main
from test_cli import NO_GPU_LIBRARY_PLAN
from test_cli_run_checks import TINY

ASSUME = ["--assume-installed", "deep_gemm,flashinfer,deep_ep"]


def _json(*args):
    r = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_readme_explain_examples_show_the_gpu_backends_on_a_cpu_machine():
    qwen = ["explain", "-m", "Qwen/Qwen3-30B-A3B-FP8", "--tp", "8", "--arch", "sm90"]
    assert _json(*qwen)["chosen"] == NO_GPU_LIBRARY_PLAN
    assert _json(*qwen, *ASSUME)["chosen"] == {"plugin": "flashinfer_cutlass", "variant": "fp8_block128"}
    d = _json("explain", "-m", "deepseek-ai/DeepSeek-V3", "--tp", "8", "--ep", "8", "--a2a", "deepep_ll",
              "--arch", "sm90", "--tokens", "128", *ASSUME)
    assert d["chosen"] == {"plugin": "deepgemm", "variant": "masked_fused"}
    assert d["plan"]["dispatcher"] == {"plugin": "deepep", "variant": "low_latency"}


def test_matrix_assume_installed_shows_the_gpu_backends():
    plain = _json("matrix")["summary"]["sm90"]["by_backend"]
    assumed = _json("matrix", *ASSUME)["summary"]["sm90"]["by_backend"]
    assert not any(b.startswith(("deepgemm", "flashinfer")) for b in plain)
    assert assumed.get("flashinfer_cutlass:bf16", 0) > 0 and assumed.get("deepgemm:masked", 0) > 0


def test_piped_tables_do_not_wrap_mid_phrase():
    args = ["explain", "-m", "Qwen/Qwen3-30B-A3B-FP8", "--tp", "8", "--arch", "sm90"]
    reasons = [c["reason"] for c in _json(*args)["candidates"]]
    p = subprocess.run([sys.executable, "-m", "moe_core.cli", *args], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"}, check=True)
    lines = p.stdout.splitlines()
    long = [r for r in reasons if len(r) > 80]
    assert long, "a reason longer than a terminal line is needed to show wrapping"
    for reason in long:
        assert any(reason in line for line in lines), f"wrapped: {reason!r}"


def test_run_prints_each_stage_as_it_goes_and_json_stays_clean(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    args = ["run", "-m", str(cfg), "--arch", "cpu", "--tokens", "8", "--iters", "1"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for stage in ("random weights for 8 experts", "load through", "run 8 tokens", "float64 check on 8 tokens"):
        assert stage in r.stderr
    assert r.stderr.count(" s\n") >= 4  # each stage ends with its time
    r = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert r.stderr == "" and json.loads(r.stdout)["ok"]
