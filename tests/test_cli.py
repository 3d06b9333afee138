"""The `moe` command as an operator uses it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from moe_core.cli import main
from moe_core.cli import run_layer as run_mod


#: What an sm90 fp8 layer resolves to without --assume-installed: the reference, or our
#: Triton kernels where triton is importable (requirements-dev.txt installs it for CI).
NO_GPU_LIBRARY_PLAN = ({"plugin": "triton", "variant": "fp8_block128"} if importlib.util.find_spec("triton")
                       else {"plugin": "reference", "variant": "loop"})


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_plugins_lists_every_in_tree_plugin_with_variants():
    r = invoke("plugins", "--json")
    assert r.exit_code == 0
    by_name = {p["name"]: p for p in json.loads(r.output)}
    assert {"reference", "deepgemm", "flashinfer_cutlass", "flashinfer_cutedsl", "deepep"} <= set(by_name)
    assert {v["name"] for v in by_name["flashinfer_cutedsl"]["variants"]} == {"v1", "v2"}
    assert invoke("plugins").exit_code == 0


def test_explain_json_shape_and_exit_codes():
    r = invoke("explain", "-m", "Qwen/Qwen3-30B-A3B-FP8", "--tp", "8", "--arch", "sm90", "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["chosen"] == NO_GPU_LIBRARY_PLAN
    assert d["spec"]["intermediate_per_partition"] == 96
    assert {"plugin", "variant", "supported", "reason"} <= set(d["candidates"][0])
    deepgemm = [c for c in d["candidates"] if c["plugin"] == "deepgemm"]
    assert deepgemm and all(not c["supported"] and "96 is not a multiple of 128" in c["reason"]
                            for c in deepgemm)
    # a forced backend that cannot run: exit 2 and its reason
    r = invoke("explain", "-m", "Qwen/Qwen3-30B-A3B-FP8", "--tp", "8", "--arch", "sm90", "--force",
               "deepgemm", "--json")
    forced = json.loads(r.output)
    assert r.exit_code == 2 and forced["chosen"] is None and forced["force"] == "deepgemm"
    assert all("96 is not a multiple of 128" in c["reason"] for c in forced["candidates"]
               if c["plugin"] == "deepgemm")
    # nothing fits once the reference is disabled too
    r = invoke("explain", "-m", "Qwen/Qwen3-30B-A3B", "--arch", "cpu", "--disable", "reference")
    assert r.exit_code == 2 and "no backend can run this spec" in r.output


def test_explain_shows_the_plan_in_text():
    r = invoke("explain", "-m", "Qwen3-30B-A3B-FP8", "--arch", "cpu", "--sbo", "--down-gemm-overlap")
    assert r.exit_code == 0
    assert "chosen reference:loop" in r.output and "down_gemm=False" in r.output


@pytest.mark.parametrize("args, message", [
    (["-m", "Qwen3-30B-A3X"], "did you mean 'Qwen/Qwen3-30B-A3B'"),
    (["-m", "Qwen3-30B-A3B", "--tp", "5"], "does not divide intermediate_size 768"),
    (["-m", "Qwen3-30B-A3B", "--tp", "8", "--ep", "3"], "ep_size: 3 does not divide tp_size 8"),
    (["-m", "Qwen3-30B-A3B", "--arch", "tpu"], "is not an architecture name"),
])
def test_bad_input_exits_2_with_the_reason(args, message):
    r = CliRunner().invoke(main, ["explain", *args])
    assert r.exit_code == 2 and message in " ".join(r.output.split())


def test_run_a_sliced_model_on_cpu():
    r = invoke("run", "-m", "openai/gpt-oss-20b", "--experts", "4", "--tokens", "8", "--arch", "cpu",
               "--iters", "1", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["backend"] == "reference:loop" and d["ok"]
    assert 0 < d["error_vs_float64"] < d["tolerance"] and d["spec"]["local_experts"] == 4


def test_run_refuses_what_would_not_fit(monkeypatch):
    monkeypatch.setattr(run_mod, "available_bytes", lambda device: 16 * 2**30)
    r = CliRunner().invoke(main, ["run", "-m", "deepseek-ai/DeepSeek-V3", "--arch", "cpu"])
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert "needs about" in out and "16.00 GiB is available" in out and "--experts" in out


def test_import_and_discovery_load_no_kernel_library_nor_torch():
    code = ("import sys, moe_core; moe_core.default_host(); "
            "print(sorted(m for m in ('torch', 'deep_gemm', 'flashinfer', 'deep_ep') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
