"""Plausible newcomer mistakes through the `moe` CLI: each exits 2 with a message that names
the input and what was expected, and never a traceback.

Most run in-process (click's CliRunner) for speed; a few run as real subprocesses, where a
traceback would print exactly as a user sees it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from moe_core.cli import main
from moe_core.cli import run_layer as run_mod

Q = ["-m", "Qwen/Qwen3-30B-A3B"]  # 128 experts, top-8, intermediate 768
CPU = ["--arch", "cpu"]
INSTALLED = "expected one of: deepep, deepgemm, flashinfer_cutedsl"

# (command line, environment, phrases the message must hold: the input and what was expected)
MISTAKES = [
    # -- which model --------------------------------------------------------------------
    (["explain", "-m", "Qwen3-30B-A3X"], {}, ["'Qwen3-30B-A3X'", "did you mean 'Qwen/Qwen3-30B-A3B'"]),
    (["explain", "-m", "qwen3"], {}, ["'qwen3'", "moe models"]),
    (["explain", "-m", "{tmp}/missing/config.json"], {}, ["missing/config.json", "no such config.json"]),
    (["explain", "-m", "{tmp}/empty_dir"], {}, ["empty_dir/config.json", "no such config.json"]),
    (["explain", "-m", "{tmp}/broken.json"], {}, ["broken.json", "not valid JSON"]),
    (["explain", "-m", "{tmp}/dense.json"], {}, ["dense.json", "expert"]),
    (["explain", *Q, "Qwen/Qwen3-30B-A3B-FP8"], {}, ["(Qwen/Qwen3-30B-A3B-FP8)", "unexpected extra argument"]),
    (["explain"], {}, ["--model", "Missing option"]),
    (["explain", "-m"], {}, ["-m", "requires an argument"]),
    # -- parallelism ----------------------------------------------------------------------
    (["explain", *Q, "--tp", "0"], {}, ["--tp", "0 is not in the range x>=1"]),
    (["explain", *Q, "--tp", "-2"], {}, ["--tp", "-2 is not in the range x>=1"]),
    (["explain", *Q, "--tp", "eight"], {}, ["--tp", "'eight' is not a valid integer"]),
    (["explain", *Q, "--tp", "5"], {}, ["5", "does not divide intermediate_size 768"]),
    (["explain", *Q, "--tp", "8", "--ep", "3"], {}, ["ep_size: 3 does not divide tp_size 8"]),
    (["explain", *Q, "--ep", "8"], {}, ["ep_size", "8", "tp_size 1"]),
    (["explain", *Q, "--tp", "8", "--ep", "0"], {}, ["--ep", "0 is not in the range x>=1"]),
    (["explain", *Q, "--tp", "8", "--rank", "8"], {}, ["rank: 8 is not in [0, tp_size=8)"]),
    (["explain", *Q, "--rank", "-1"], {}, ["--rank", "-1 is not in the range x>=0"]),
    (["explain", *Q, "--tp", "2", "--ep", "2", "--experts", "9"], {},
     ["2 does not divide num_experts 9", "expected a divisor of 9"]),
    (["explain", *Q, "--a2a", "deepep_ll"], {}, ["'deepep_ll'", "ep_size is 1", "expected a2a 'none'"]),
    (["explain", *Q, "--a2a", "deepep"], {}, ["--a2a", "'deepep' is not one of", "'deepep_ll'"]),
    # -- formats and hardware -------------------------------------------------------------
    (["explain", *Q, "--quant", "fp4"], {}, ["--quant", "'fp4' is not one of", "'nvfp4'"]),
    (["explain", *Q, "--quant", "FP8"], {}, ["--quant", "'FP8' is not one of", "'fp8_block128'"]),
    (["explain", *Q, "--act-dtype", "fp8"], {}, ["--act-dtype", "'fp8' is not one of", "'bf16'"]),
    (["explain", *Q, "--arch", "tpu"], {}, ["'tpu'", "is not an architecture name"]),
    (["explain", *Q, "--arch", "h100"], {}, ["'h100'", "is not an architecture name"]),
    (["explain", *Q, "--arch", "sm"], {}, ["'sm'", "is not an architecture name"]),
    (["explain", *Q, "--down-gemm-overlap"], {}, ["down_gemm_overlap", "needs sbo=True"]),
    # -- sizes ----------------------------------------------------------------------------
    (["explain", *Q, "--tokens", "0"], {}, ["--tokens", "0 is not in the range x>=1"]),
    (["explain", *Q, "-t", "-64"], {}, ["--tokens", "-64 is not in the range x>=1"]),
    (["explain", *Q, "--tokens", "1k"], {}, ["--tokens", "'1k' is not a valid integer"]),
    (["explain", *Q, "--experts", "0"], {}, ["--experts", "0 is not in the range x>=1"]),
    (["explain", *Q, "--experts", "1000"], {}, ["--experts", "1000", "has 128 experts", "expected 1 to 128"]),
    (["explain", *Q, "--experts", "4"], {}, ["--experts", "4 is fewer than the 8 experts",
                                              "expected --experts 8 or more", "--top-k at most 4"]),
    (["explain", *Q, "--top-k", "0"], {}, ["--top-k", "0 is not in the range x>=1"]),
    (["explain", *Q, "--top-k", "300"], {}, ["--top-k", "300", "only 128 experts", "expected at most 128"]),
    (["explain", *Q, "--experts", "16", "--top-k", "32"], {}, ["--top-k", "32", "expected at most 16"]),
    (["explain", *Q, "--top_k", "2"], {}, ["--top_k", "No such option", "--top-k"]),
    (["explain", *Q, "--expert", "8"], {}, ["--expert", "No such option", "--experts"]),
    # -- which backend --------------------------------------------------------------------
    (["explain", *Q, "--force", "deepgemm:nope"], {},
     ["--force deepgemm:nope", "no variant 'nope'", "expected one of: deepgemm:contiguous"]),
    (["explain", *Q, "--force", "deepgemmm"], {}, ["'deepgemmm'", INSTALLED, "did you mean 'deepgemm'"]),
    (["explain", *Q, "--force", "flashinfer"], {}, ["'flashinfer'", INSTALLED, "did you mean 'flashinfer_"]),
    (["explain", *Q, "--force", "reference:grouped-mm"], {},
     ["no variant 'grouped-mm'", "reference:loop", "did you mean 'reference:grouped_mm'"]),
    (["explain", *Q, "--disable", "refrence"], {}, ["--disable refrence", INSTALLED, "did you mean 'reference'"]),
    (["explain", *Q, "--disable", "reference,deepgemm:nope"], {}, ["deepgemm:nope", "no variant 'nope'"]),
    (["explain", *Q], {"MOE_DISABLE": "refrence"}, ["MOE_DISABLE=refrence", INSTALLED, "did you mean 'reference'"]),
    (["explain", *Q], {"MOE_BACKEND": "deep_gemm"}, ["MOE_BACKEND=deep_gemm", INSTALLED, "did you mean 'deepgemm'"]),
    (["explain", *Q, "--assume-installed", "flashinfr"], {},
     ["--assume-installed", "'flashinfr'", "expected one of: deep_ep, deep_gemm, flashinfer", "did you mean 'flashinfer'"]),
    (["explain", *Q, "--assume-installed", "deep-gemm"], {}, ["'deep-gemm'", "did you mean 'deep_gemm'"]),
    (["explain", *Q, "--arch", "cpu", "--disable", "reference"], {},
     ["no backend can run this spec", "disabled"]),
    # -- moe run --------------------------------------------------------------------------
    (["run", *Q, *CPU, "--iters", "0"], {}, ["--iters", "0 is not in the range x>=1"]),
    (["run", *Q, *CPU, "--iters", "-3"], {}, ["--iters", "-3 is not in the range x>=1"]),
    (["run", *Q, *CPU, "--tokens", "0"], {}, ["--tokens", "0 is not in the range x>=1"]),
    (["run", *Q, *CPU, "--experts", "1000"], {}, ["--experts", "1000", "has 128 experts"]),
    (["run", *Q, *CPU, "--experts", "4"], {}, ["--experts", "4 is fewer than the 8 experts", "--top-k"]),
    (["run", *Q, *CPU, "--seed", "x"], {}, ["--seed", "'x' is not a valid integer"]),
    (["run", *Q, "--arch", "sm90"], {}, ["arch sm90 needs a CUDA device", "use --arch cpu"]),
    (["run", *Q, *CPU, "--force", "deepgemm:nope"], {}, ["--force deepgemm:nope", "no variant 'nope'"]),
    (["run", *Q, *CPU, "--force", "deepgemm"], {}, ["forced backend 'deepgemm' cannot run", "cpu"]),
    (["run", *Q, *CPU], {"MOE_DISABLE": "refrence"}, ["MOE_DISABLE=refrence", "did you mean 'reference'"]),
    (["run", *Q, *CPU, "--disable", "reference"], {}, ["no backend can run", "disabled"]),
    (["run", *Q, *CPU, "--json", "yes"], {}, ["(yes)", "unexpected extra argument"]),
    # -- moe matrix, moe hf, the group ----------------------------------------------------
    (["matrix", "--html", "{tmp}/no/such/dir/m.html"], {}, ["--html", "no/such/dir/m.html", "No such file or directory"]),
    (["matrix", "--html", "{tmp}"], {}, ["--html", "Is a directory"]),
    (["matrix", "--assume-installed", "flashinfr"], {}, ["'flashinfr'", "did you mean 'flashinfer'"]),
    (["matrix"], {"MOE_DISABLE": "deepgemm:masked_fussed"}, ["deepgemm:masked_fussed", "did you mean 'deepgemm:masked_fused'"]),
    (["matrix", "--tp", "8"], {}, ["--tp", "No such option"]),
    (["matirx"], {}, ["'matirx'", "No such command", "matrix"]),
    (["hf", "--device", "cuda"], {}, ["--device", "cuda", "no CUDA device", "expected cpu or auto"]),
    (["hf", "--device", "gpu"], {}, ["--device", "'gpu' is not one of", "'cuda'"]),
    (["hf", "--layers", "0"], {}, ["--layers", "0 is not in the range x>=1"]),
    (["hf", "--experts", "0"], {}, ["--experts", "0 is not in the range x>=1"]),
    (["hf", "--tokens", "0"], {}, ["--tokens", "0 is not in the range x>=1"]),
    (["hf", "--hidden", "-8"], {}, ["--hidden", "-8 is not in the range x>=1"]),
    (["hf", "-m", "Qwen3-30B-A3X"], {}, ["'Qwen3-30B-A3X'", "did you mean 'Qwen/Qwen3-30B-A3B'"]),
    (["hf", "-m", "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-FP8"], {}, ["is not a family this integration covers", "tested:"]),
    (["hf", "--hf-config", "{tmp}/missing.json"], {}, ["--hf-config", "missing.json", "does not exist"]),
    (["hf"], {"MOE_BACKEND": "referense"}, ["MOE_BACKEND=referense", "did you mean 'reference'"]),
    (["models", "--jsn"], {}, ["--jsn", "No such option", "--json"]),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    (d / "empty_dir").mkdir()
    (d / "broken.json").write_text('{"num_experts": 8,')
    (d / "dense.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096,
                                              "intermediate_size": 11008}))
    return d


def _text(output: str) -> str:
    return " ".join(output.split())  # one line: a terminal may wrap


def test_enough_mistakes_are_tried():
    assert len(MISTAKES) >= 60


@pytest.mark.parametrize("args, env, phrases", MISTAKES,
                         ids=[" ".join(a)[:60] + (f" [{next(iter(e))}]" if e else "") for a, e, _ in MISTAKES])
def test_mistake_exits_2_naming_the_input_and_what_was_expected(tmp, args, env, phrases):
    args = [a.format(tmp=tmp) for a in args]
    r = CliRunner().invoke(main, args, env=env)
    out = _text(r.output)
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), \
        f"exception escaped: {r.exception!r}"
    assert r.exit_code == 2, out
    for phrase in phrases:
        assert phrase in out, f"{phrase!r} not in: {out}"


def test_a_slice_below_the_top_k_runs_with_an_explicit_top_k():
    """What the --experts 4 message suggests is accepted, and routes to that many experts."""
    r = CliRunner().invoke(main, ["explain", *Q, "--arch", "cpu", "--experts", "4", "--top-k", "2",
                                  "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    spec = json.loads(r.output)["spec"]
    assert (spec["num_experts"], spec["top_k"]) == (4, 2)


# -- the memory advice is one the run then accepts ----------------------------------------
def _advice(args):
    r = CliRunner().invoke(main, ["run", *args, "--arch", "cpu"], catch_exceptions=False)
    assert r.exit_code == 2
    return _text(r.output)


def test_memory_advice_suggests_an_expert_count_the_run_accepts(monkeypatch):
    """DeepSeek-V3 suggested --experts 199 and then refused 199."""
    monkeypatch.setattr(run_mod, "available_bytes", lambda device: 16 * 2**30)
    out = _advice(["-m", "deepseek-ai/DeepSeek-V3"])
    n = int(re.search(r"Run a slice: --experts (\d+)", out).group(1))
    from moe_core import spec_for_model

    def fits(experts):
        spec = spec_for_model("deepseek-ai/DeepSeek-V3", arch="cpu", max_tokens=64, experts=experts)
        return run_mod.planned_bytes(spec, 64) <= run_mod.MEMORY_SHARE * 16 * 2**30

    assert 8 <= n < 256 and fits(n) and not fits(n + 1), n  # the largest slice that fits
    spec = spec_for_model("deepseek-ai/DeepSeek-V3", arch="cpu", max_tokens=64, experts=n)
    run_mod.check_memory("deepseek-ai/DeepSeek-V3", spec, 64, "cpu")  # accepted: no error


def test_memory_advice_under_ep_is_a_multiple_of_the_ep_size(monkeypatch):
    monkeypatch.setattr(run_mod, "available_bytes", lambda device: 6 * 2**30)
    out = _advice(["-m", "deepseek-ai/DeepSeek-V3", "--tp", "8", "--ep", "8"])
    n = int(re.search(r"Run a slice: --experts (\d+)", out).group(1))
    assert n % 8 == 0 and n < 256


def test_memory_advice_for_huge_tokens_lowers_tokens_not_experts(monkeypatch):
    monkeypatch.setattr(run_mod, "available_bytes", lambda device: 8 * 2**30)
    out = _advice([*Q, "--tokens", "50000000"])
    assert "--experts" not in out.split("needs about")[1]
    t = int(re.search(r"Lower --tokens to at most (\d+)", out).group(1))
    assert 0 < t < 50_000_000


# -- a bug is one line, not a traceback; --debug shows it -----------------------------------
def test_an_internal_error_exits_1_with_one_line_and_how_to_see_the_traceback(monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(run_mod, "load_model_config", broken, raising=False)
    import moe_core.models

    monkeypatch.setattr(moe_core.models, "load_model_config", broken)
    r = CliRunner().invoke(main, ["run", *Q, "--arch", "cpu"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    out = _text(r.output)
    assert "internal error" in out and "ZeroDivisionError: boom" in out and "--debug" in out
    assert "MOE_DEBUG=1" in out
    r = CliRunner().invoke(main, ["--debug", "run", *Q, "--arch", "cpu"])
    assert isinstance(r.exception, ZeroDivisionError)
    r = CliRunner().invoke(main, ["run", *Q, "--arch", "cpu"], env={"MOE_DEBUG": "1"})
    assert isinstance(r.exception, ZeroDivisionError)


# -- real processes: what a user's terminal shows ------------------------------------------
@pytest.mark.parametrize("args, env, phrase", [
    (["run", *Q, "--arch", "cpu", "--iters", "0"], {}, "0 is not in the range x>=1"),
    (["matrix", "--html", "/no/such/dir/m.html"], {}, "No such file or directory"),
    (["hf", "--device", "cuda"], {}, "no CUDA device"),
    (["explain", *Q], {"MOE_DISABLE": "refrence"}, "did you mean 'reference'"),
], ids=["run-iters-0", "matrix-html-dir", "hf-cuda", "env-typo"])
def test_mistakes_in_a_real_process(args, env, phrase):
    p = subprocess.run([sys.executable, "-m", "moe_core.cli", *args], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert phrase in _text(p.stderr)
