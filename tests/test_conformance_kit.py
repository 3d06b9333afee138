"""The conformance kit catches dishonest plugins (run through pytester, as an author would)."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

PLUGINS = textwrap.dedent('''
    from moe_core import Host, Reason, Variant, Verdict, hookimpl
    from moe_core.reference.experts import ReferenceRunner
    from moe_core.registry import Registry


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


    def host():
        reg = Registry.builtin()
        for name, cls in (("liar", Liar), ("wrong", Wrong), ("mutator", Mutator), ("vague", Vague),
                          ("uncoded", Uncoded)):
            reg.register(cls(), name)
        return Host(reg)
''')


@pytest.fixture
def run_kit(pytester):
    pytester.makepyfile(dishonest_plugins=PLUGINS)

    def run(name):
        # A subprocess, as an author runs it (the kit loads through pytest11); in-process
        # pytest sessions sharing one torch are not isolated enough.
        return pytester.runpytest_subprocess(
            f"--moe-conformance={name}", "--moe-conformance-host=dishonest_plugins:host",
            "--moe-conformance-examples=15", "-k", "cpu and bf16 or declarations", "-p", "no:cacheprovider")
    return run


@pytest.mark.parametrize("name, message", [
    ("liar", "said yes to .* but loading or running it raised RuntimeError: CUDA error: misaligned"),
    ("wrong", "its output differs from the reference by"),
    ("mutator", "it modified the caller's w13"),
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
