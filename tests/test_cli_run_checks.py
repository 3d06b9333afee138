"""`moe run` judges the output against a reference computed from a pristine copy of the
weights, and fails on non-finite or all-zero output whatever the error says."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import moe_core
from conftest import host_with, make_plugin, one
from moe_core import Verdict
from moe_core.cli import main
from moe_core.reference.experts import ReferenceRunner

#: A tiny MoE config (8 experts, hidden 128): the checks, not the size, are under test.
TINY = {"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "hidden_size": 128,
        "moe_intermediate_size": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


class ZeroesWeightsRunner(ReferenceRunner):
    """Zeroes the caller's weights in place on its first call, then computes on them."""

    def run_contiguous(self, x, offsets):
        for t in self.weights.tensors().values():
            t.zero_()
        return super().run_contiguous(x, offsets)


class NaNRunner(ReferenceRunner):
    def run_contiguous(self, x, offsets):
        return torch.full((x.shape[0], self.spec.hidden_size), float("nan"), dtype=x.dtype)


class ZeroRunner(ReferenceRunner):
    def run_contiguous(self, x, offsets):
        return torch.zeros(x.shape[0], self.spec.hidden_size, dtype=x.dtype)


def _run_with(monkeypatch, tiny, runner, *extra):
    plugin = make_plugin(one("k"), lambda spec: [Verdict.yes("k", "test")], runner=runner)
    host = host_with(("bad", plugin))
    monkeypatch.setattr(moe_core, "default_host", lambda: host)
    args = ["run", "-m", tiny, "--tokens", "8", "--arch", "cpu", "--iters", "1", "--force", "bad"]
    return CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)


@pytest.mark.parametrize("runner, problem", [
    (ZeroesWeightsRunner, "the backend changed the caller's weights in place (w13, w2)"),
    (NaNRunner, "the output holds NaN or Inf"),
    (ZeroRunner, "the output is all zeros"),
], ids=["mutates-weights", "nan", "zeros"])
def test_a_broken_backend_fails_the_run(monkeypatch, tiny, runner, problem):
    r = _run_with(monkeypatch, tiny, runner)
    out = " ".join(r.output.split())
    assert r.exit_code == 1, out
    assert f"FAILED: {problem}" in out and "OK" not in out.split("tolerance")[-1]
    d = json.loads(_run_with(monkeypatch, tiny, runner, "--json").stdout)
    assert not d["ok"] and any(problem in p for p in d["problems"])


def test_weights_zeroed_in_place_do_not_pass_as_a_small_error(monkeypatch, tiny):
    """Before, the float64 check read the zeroed weights: error 0.00 and OK."""
    d = json.loads(_run_with(monkeypatch, tiny, ZeroesWeightsRunner, "--json").stdout)
    assert d["error_vs_float64"] == pytest.approx(1.0)  # against the pristine weights
    assert d["error_vs_reference"] == pytest.approx(1.0)


def test_an_honest_backend_passes_with_no_problems(monkeypatch, tiny):
    r = _run_with(monkeypatch, tiny, ReferenceRunner, "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["ok"] and d["problems"] == [] and d["error_vs_reference"] < 1e-6
