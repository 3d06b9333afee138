"""The conformance kit catches dishonest plugins (run through pytester, as an author would)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_core.conformance.strategies import specs

pytest_plugins = ["pytester"]

PLUGINS = textwrap.dedent('''
    from moe_core import A2A, DISPATCHER, Host, Reason, Variant, Verdict, hookimpl
    from moe_core.reference.experts import ReferenceRunner
    from moe_core.registry import Registry
    from moe_core.torch_dispatch.a2a import TorchAllToAll


    class Bf16Only:
        """Says yes to bf16 specs; subclasses decide how they misbehave."""
        summary = "bf16 only"
        @hookimpl
        def moe_variants(self):
            return [Variant("v", 50, self.summary)]
        @hookimpl
        def supports_shape(self, spec):
            return [Verdict.yes("v") if spec.quant.value == "bf16" else
                    Verdict.no("v", Reason.QUANT_UNSUPPORTED, "bf16 only, this is " + spec.quant.value)]


    class Liar(Bf16Only):
        """Claims every bf16 spec, then crashes on ragged sizes."""
        @hookimpl
        def make_runner(self, plan, weights):
            if plan.spec.hidden_size % 64:
                raise RuntimeError("CUDA error: misaligned address")
            return ReferenceRunner(plan, weights)


    class Wrong(Bf16Only):
        """Runs, but doubles the output."""
        @hookimpl
        def make_runner(self, plan, weights):
            ref = ReferenceRunner(plan, weights)
            return lambda x, w, i: ref(x, w, i) * 2


    class Mutator(Bf16Only):
        """Zeroes the caller's tensor in place."""
        @hookimpl
        def process_weights(self, plan, weights):
            weights.w13.zero_()
            return weights
        @hookimpl
        def make_runner(self, plan, weights):
            return ReferenceRunner(plan, weights)


    class Vague:
        @hookimpl
        def moe_variants(self):
            return [Variant("v", 50, "says no, vaguely")]
        @hookimpl
        def supports_shape(self, spec):
            return [Verdict.no("v", Reason.SHAPE_UNSUPPORTED, "not supported")]
        @hookimpl
        def make_runner(self, plan, weights):
            raise AssertionError("never chosen")


    class Uncoded(Vague):
        """Declines with the old text-only form: a specific reason, but no code."""
        @hookimpl
        def supports_shape(self, spec):
            return [Verdict.no("v", f"hidden {spec.hidden_size} is not a multiple of 4096")]


    class RunnerMutator(Bf16Only):
        """No process_weights (it runs on the caller's tensors), and its runner zeroes the
        caller's w2 after computing each output."""
        @hookimpl
        def make_runner(self, plan, weights):
            class Runner(ReferenceRunner):
                def run_contiguous(self, x, offsets):
                    y = super().run_contiguous(x, offsets)
                    self.weights.w2.zero_()
                    return y
            return Runner(plan, weights)


    class ScaledWhen(ReferenceRunner):
        """The reference, 10% off on the specs ``bug(spec)`` names."""
        def __init__(self, plan, weights, bug):
            super().__init__(plan, weights)
            self.scale = 1.1 if bug(plan.spec) else 1.0
        def run_contiguous(self, x, offsets):
            return super().run_contiguous(x, offsets) * self.scale


    class Fp32Bug(Bf16Only):
        """Right with bf16 activations, wrong with fp32 ones."""
        @hookimpl
        def make_runner(self, plan, weights):
            return ScaledWhen(plan, weights, lambda s: s.act_dtype == "fp32")


    class RareBug(Bf16Only):
        """Wrong on a sliver of specs (fp32 activations, hidden size a multiple of 7): a random
        draw finds it or not, so only a seeded kit gives the same verdict every run."""
        @hookimpl
        def make_runner(self, plan, weights):
            return ScaledWhen(plan, weights,
                              lambda s: s.act_dtype == "fp32" and s.hidden_size % 7 == 0)


    class Raiser:
        """A dispatcher whose supports_dispatch always raises."""
        @hookimpl
        def moe_variants(self):
            return [Variant("v", 5, "torch_a2a, any layout", kind=DISPATCHER, modes=(A2A.TORCH_A2A,))]
        @hookimpl
        def supports_dispatch(self, spec, dispatch):
            raise KeyError("deep inside the dispatcher")
        @hookimpl
        def make_dispatcher(self, plan, group):
            raise AssertionError("never built")


    class Corrupting(TorchAllToAll):
        def dispatch(self, x, topk_ids, topk_weights):
            d = super().dispatch(x, topk_ids, topk_weights)
            d.x = d.x * 1.5
            return d


    class Corrupt(Raiser):
        """Says yes to every dispatch, then scales the tokens it delivers."""
        @hookimpl
        def supports_dispatch(self, spec, dispatch):
            return [Verdict.yes("v", "moves anything")]
        @hookimpl
        def make_dispatcher(self, plan, group):
            return Corrupting(plan, group)


    def host():
        reg = Registry.builtin()
        for name, cls in (("liar", Liar), ("wrong", Wrong), ("mutator", Mutator), ("vague", Vague),
                          ("uncoded", Uncoded), ("runner_mutator", RunnerMutator),
                          ("fp32bug", Fp32Bug), ("rarebug", RareBug), ("raiser", Raiser),
                          ("corrupt", Corrupt)):
            reg.register(cls(), name)
        return Host(reg)
''')


@pytest.fixture
def run_kit(pytester):
    pytester.makepyfile(dishonest_plugins=PLUGINS)

    def run(name, *args, select="cpu and bf16 or declarations", examples=15):
        # A subprocess, as an author runs it (the kit loads through pytest11); in-process
        # pytest sessions sharing one torch are not isolated enough.
        return pytester.runpytest_subprocess(
            f"--moe-conformance={name}", "--moe-conformance-host=dishonest_plugins:host",
            f"--moe-conformance-examples={examples}", "-k", select, "-p", "no:cacheprovider",
            *args)
    return run


@pytest.mark.parametrize("name, message", [
    ("liar", "said yes to .* but loading or running it raised RuntimeError: CUDA error: misaligned"),
    ("wrong", "its output differs from the reference by"),
    ("mutator", "it modified the caller's w13 in process_weights"),
    # mutation, not a numbers mismatch, though the output it returned was right
    ("runner_mutator", "it modified the caller's w2 in make_runner or its run"),
    ("vague", "with a reason that says nothing specific: 'not supported'"),
    ("uncoded", "without a reason code"),
])
def test_kit_fails_a_dishonest_plugin(run_kit, name, message):
    result = run_kit(name)
    assert result.ret == 1
    result.stdout.re_match_lines([f".*{message}.*"])


def test_kit_passes_an_honest_plugin(run_kit):
    result = run_kit("reference")
    result.assert_outcomes(passed=2, failed=0)


def _reproduce(result, backend, pytester):
    """Runs the failure's ``reproduce:`` command for ``backend`` (with this interpreter)."""
    commands = [line.split("reproduce: ", 1)[1] for line in result.outlines if "reproduce: " in line]
    command = next((c for c in commands if backend in c), None)
    assert command and re.match(r"(MOE_DEBUG=1 )?python -c ", command), result.outlines
    return subprocess.run(command.replace("python -c ", f"{sys.executable} -c ", 1), shell=True,
                          cwd=pytester.path, capture_output=True, text=True, timeout=300)


def test_kit_checks_dispatchers(run_kit, pytester):
    """A dispatcher whose supports_dispatch raises fails (with where, in debug mode); one
    that says yes and corrupts tokens fails its round trip; the built-in one passes."""
    result = run_kit("raiser,corrupt,torch", "--moe-conformance-debug", "-rA",
                     select="dispatcher and cpu", examples=5)
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    for outcome, plugin in (("PASSED", "torch"), ("FAILED", "raiser"), ("FAILED", "corrupt")):
        result.stdout.re_match_lines([rf"{outcome} .*test_dispatcher_honest\[{plugin}-cpu\]"])
    result.stdout.re_match_lines([  # each failure's first line, in debug mode
        r"E .*ConformanceError: raiser:v broke a hook on .* act=bf16, dispatching .*"
        r"supports_dispatch failed: KeyError: 'deep inside the dispatcher' "
        r"\(at .*dishonest_plugins.py:\d+\)",
        r"E .*ConformanceError: corrupt:v said yes to dispatching .* act=bf16 as torch_a2a .* but on "
        r"a 2-process gloo group rank 0's output differs from the single-process reference by "
        r".*tolerance 0.01: bf16 wire"], consecutive=False)
    assert "raise KeyError" in out and "Traceback (most recent call last)" in out  # debug
    run = _reproduce(result, "'corrupt:v'", pytester)  # spawns its own two processes
    assert run.returncode == 1 and "corrupt:v said yes to dispatching" in run.stderr, run.stderr
    assert "rank 0's output differs from the single-process reference" in run.stderr
    ran = re.search(r"torch: (\d+) round trips on a 2-process gloo group", out)
    assert ran and int(ran.group(1)) >= 10, out[-2000:]


def _without_timings(lines):
    """Output lines, less durations and object addresses (what may differ between runs)."""
    return [re.sub(r"0x[0-9a-f]+", "0x?", line) for line in lines
            if not re.search(r"\d+\.\d+s\b", line)]


def test_kit_runs_are_deterministic_and_failures_reproducible(run_kit, pytester):
    """Two runs check the same specs (the seed is printed); a failure names the activation
    dtype and carries a command that reproduces it."""
    first = run_kit("fp32bug,rarebug", select="cpu and bf16")
    second = run_kit("fp32bug,rarebug", select="cpu and bf16")
    assert _without_timings(first.outlines) == _without_timings(second.outlines)
    first.stdout.fnmatch_lines(["moe-conformance: *seed 0 (--moe-conformance-seed)*"])
    # one line names the broken promise, with the activation dtype
    first.stdout.re_match_lines([r"E .*ConformanceError: fp32bug:v said yes to .* act=fp32, but its "
                                 r"output differs from the reference"])
    assert "reproduce: python -c " in first.stdout.str()
    run = _reproduce(first, "'fp32bug:v'", pytester)
    assert run.returncode == 1 and "ConformanceError: fp32bug:v said yes to" in run.stderr, run.stderr
    assert "act=fp32, but its output differs from the reference" in run.stderr


@settings(max_examples=60, database=None, derandomize=True, deadline=None)
@given(st.one_of(specs(), specs(moves_tokens=True)))
def test_a_spec_literal_evaluates_to_the_spec(spec):
    from moe_core import DispatchConfig, MoESpec
    from moe_core.conformance.checks import dispatch_configs, literal

    text = literal(spec.replace(model="org/some-model"))
    assert text.startswith("MoESpec(num_experts=") and "model='org/some-model'" in text
    assert eval(text) == spec
    for cfg in dispatch_configs(spec):
        assert eval(literal(cfg)) == cfg


def test_a_literal_names_only_the_fields_off_their_defaults():
    from moe_core import MoESpec
    from moe_core.conformance.checks import literal

    spec = MoESpec(num_experts=4, top_k=2, hidden_size=8, intermediate_size=8, act_dtype="fp32")
    assert literal(spec) == ("MoESpec(num_experts=4, top_k=2, hidden_size=8, intermediate_size=8, "
                             "act_dtype='fp32')")


def test_a_runner_that_mutates_its_inputs_is_reported_as_mutating_them(small_spec):
    """In-place work on the hidden states or routing it was handed is mutation, named so, even
    when its output was right (the reference runs on copies taken before)."""
    from conftest import host_with, make_plugin, one

    from moe_core import Verdict
    from moe_core.conformance.checks import ConformanceError, check_run
    from moe_core.reference.experts import ReferenceRunner

    class InPlace(ReferenceRunner):
        def __call__(self, x, topk_weights, topk_ids):
            out = super().__call__(x, topk_weights, topk_ids)
            topk_weights.mul_(0.5)
            return out

    host = host_with(("p", make_plugin(one("k", 50), lambda spec: [Verdict.yes("k")], runner=InPlace)))
    with pytest.raises(ConformanceError, match="modified the caller's topk_weights in make_runner "
                                               "or its run") as e:
        check_run(host, "p:k", small_spec)
    assert e.value.call.startswith("check_run(host, 'p:k', MoESpec(num_experts=8, top_k=2, ")
