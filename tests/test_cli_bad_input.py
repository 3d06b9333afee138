"""Inputs that once reached torch or transformers and came back as an internal error (exit 1),
or as a run that could not end well: each is now refused up front, exit 2, naming the option.

The work a mistake would start (building a transformers model, tuning) is replaced by a stub
that fails loudly, so a check that is missing fails the test at once instead of hanging it.
"""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

import moe_core.integrations.transformers as hf_integration
import moe_core.tuning
from moe_core import spec_for_model
from moe_core.cli import main
from moe_core.cli import run_layer as run_mod
from moe_core.cli.tune import check_buckets

hf_mod = importlib.import_module("moe_core.cli.hf")  # moe_core.cli.hf is the command

Q = ["-m", "Qwen/Qwen3-30B-A3B", "--experts", "8"]
TUNE = ["tune", *Q, "--arch", "cpu", "--iters", "1", "--warmup", "0", "--no-progress"]


class Reached(Exception):
    """The command got past its input checks to the work itself."""


def _stub(*a, **k):
    raise Reached


@pytest.fixture(autouse=True)
def no_real_work(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_integration, "tiny_config", _stub)
    monkeypatch.setattr(moe_core.tuning, "tune", _stub)
    monkeypatch.setenv("MOE_TUNING_CACHE", str(tmp_path / "cache"))


def _refused(args, *phrases):
    r = CliRunner().invoke(main, args)
    out = " ".join(r.output.split())
    assert "Traceback" not in r.output and "internal error" not in out, out
    assert r.exit_code == 2, out
    for phrase in phrases:
        assert phrase in out, f"{phrase!r} not in: {out}"
    return out


# -- a device this machine lacks --------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "tune"])
def test_an_npu_arch_without_an_npu_is_a_usage_error(command):
    _refused([command, *Q, "-t", "4", "--arch", "npu"], "arch npu needs an NPU device", "use --arch cpu")


# -- the seed torch takes ---------------------------------------------------------------
@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**64), "-1"])
def test_a_seed_torch_cannot_take_is_refused(seed):
    _refused(["run", *Q, "-t", "4", "--arch", "cpu", "--seed", seed], "--seed", "0<=x<=18446744073709551615")


def test_the_largest_seed_runs():
    r = CliRunner().invoke(main, ["run", "-m", "Qwen/Qwen3-30B-A3B", "--experts", "2", "--top-k", "2",
                                  "-t", "1", "--iters", "1", "--arch", "cpu", "--seed", str(2**64 - 1)])
    assert r.exit_code == 0, r.output


# -- moe hf: sizes its tiny model can take ----------------------------------------------
@pytest.mark.parametrize("option, value", [("--hidden", "3"), ("--hidden", "30"), ("--hidden", "33"),
                                           ("--intermediate", "12"), ("--intermediate", "1")])
def test_hf_widths_are_multiples_of_8(option, value):
    _refused(["hf", option, value], option, f"{value} is not a multiple of 8")


@pytest.mark.parametrize("option, value, most", [("--layers", "100000", 64), ("--experts", "100000", 512),
                                                 ("--hidden", "1048576", 16384), ("--tokens", "100000", 4096)])
def test_hf_sizes_are_bounded(option, value, most):
    _refused(["hf", option, value], option, f"{value} is above {most}", f"expected 1 to {most}")


def test_hf_layers_beyond_the_familys_layer_types_are_refused():
    _refused(["hf", "-m", "openai/gpt-oss-20b", "--layers", "40"], "--layers", "40", "at most 36")


def test_hf_sizes_that_together_do_not_fit_are_refused(monkeypatch):
    monkeypatch.setattr(hf_mod, "available_bytes", lambda device: 16 * 2**30)
    _refused(["hf", "--layers", "64", "--experts", "512", "--hidden", "4096", "--intermediate", "4096"],
             "--layers 64 --experts 512", "GiB is available")


def test_hf_defaults_pass_the_checks():
    r = CliRunner().invoke(main, ["hf"])
    assert isinstance(r.exception, SystemExit) and "Reached" in r.output  # the stub, past every check


# -- moe tune: a plot it can write, buckets that fit ------------------------------------
def test_a_plot_in_a_missing_folder_is_refused_before_tuning(tmp_path):
    png = tmp_path / "missing" / "x.png"
    _refused([*TUNE, "-t", "4", "--plot", str(png)], "--plot", str(png), "No such file or directory")


def test_a_plot_path_that_is_a_folder_is_refused(tmp_path):
    _refused([*TUNE, "-t", "4", "--plot", str(tmp_path)], "--plot", "is a directory")


@pytest.mark.parametrize("args, option", [(["-t", "4", "--buckets", "1,99999999999"], "--buckets"),
                                          (["-t", "99999999999"], "--tokens")])  # its default buckets
def test_buckets_that_cannot_fit_are_refused_with_the_largest_that_does(monkeypatch, args, option):
    monkeypatch.setattr(run_mod, "available_bytes", lambda device: 16 * 2**30)
    out = _refused([*TUNE, *args], option, "99999999999 tokens", "GiB is available")
    most = int(out.split("expected at most ")[1].split()[0])
    spec = spec_for_model("Qwen/Qwen3-30B-A3B", arch="cpu", max_tokens=4, experts=8)
    check_buckets(spec, [most], option)  # the advice is accepted ...
    with pytest.raises(Exception, match=f"{most + 1} tokens"):
        check_buckets(spec, [most + 1], option)  # ... and is the largest


def test_weights_that_cannot_fit_advise_a_slice(monkeypatch):
    monkeypatch.setattr(run_mod, "available_bytes", lambda device: 8 * 2**30)
    _refused(["tune", "-m", "deepseek-ai/DeepSeek-V3", "--arch", "cpu", "-t", "1"], "Run a slice: --experts")


def test_a_model_whose_layers_differ_says_which_layer_and_takes_layer(tmp_path, monkeypatch):
    """A config with per-layer sizes: explain names the layer it planned and the others;
    --layer plans another; a layer without routed experts is refused by name."""
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "qwen3_moe", "hidden_size": 256, "num_experts": 8, '
                   '"moe_intermediate_size": [128, 128, 64, 64], "num_experts_per_tok": 2, '
                   '"num_hidden_layers": 4, "intermediate_size": 512}')
    args = ["explain", "-m", str(cfg), "--arch", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "layers 0-1: E=8 top2 I=128; layers 2-3: E=8 top2 I=64" in r.output
    assert "this is layer 0, --layer N plans another" in r.output and "I=128 (128/rank)" in r.output
    r = CliRunner().invoke(main, [*args, "--layer", "2"])
    assert r.exit_code == 0 and "I=64 (64/rank)" in r.output and "differ" not in r.output, r.output
    r = CliRunner().invoke(main, [*args, "--layer", "9"])
    assert r.exit_code == 2 and "--layer" in r.output and "layer 9 has no routed experts" in r.output


def test_a_bad_assume_installed_variable_is_refused_like_the_option(monkeypatch):
    monkeypatch.setenv("MOE_ASSUME_INSTALLED", "deep_gem")
    r = CliRunner().invoke(main, ["explain", *Q, "--arch", "sm90"])
    assert r.exit_code == 2, r.output
    assert "$MOE_ASSUME_INSTALLED" in r.output and "did you mean 'deep_gemm'" in r.output
