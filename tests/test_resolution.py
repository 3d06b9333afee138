"""Resolution: ranking, fall-through, determinism, force/forbid, broken-plugin isolation."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from conftest import host_with, make_plugin, one
from moe_core import (BackendUnavailable, Layout, NoBackendError, Overlap, Reason, ResolutionError,
                      Status, Variant, Verdict)
from moe_core.errors import PluginError

BROKEN, DECLINED, DISABLED, NOT_FORCED, SUPPORTED = (Status.BROKEN, Status.DECLINED, Status.DISABLED,
                                                     Status.NOT_FORCED, Status.SUPPORTED)


def yes(name, **kw):
    return make_plugin(one(name, kw.pop("priority", 10)), lambda s: [Verdict.yes(name, f"{name} ok", **kw)])


def no(name, reason="nope, for a test", priority=10, code=Reason.SHAPE_UNALIGNED):
    return make_plugin(one(name, priority), lambda s: [Verdict.no(name, code, reason)])


def statuses(res):
    return {str(c.backend): c.status for c in res.candidates}


def test_highest_priority_supported_wins_and_others_are_ranked(small_spec):
    host = host_with(("low", yes("a", priority=10)), ("high", yes("b", priority=50)))
    res = host.explain(small_spec)
    assert str(res.plan.backend) == "high:b"
    assert [str(c.backend) for c in res.candidates[:3]] == ["high:b", "low:a", "reference:loop"]
    assert statuses(res)["low:a"] == SUPPORTED


def test_unsupported_shape_falls_through_with_its_reason(small_spec):
    host = host_with(("fast", no("k", "intermediate per partition 961 is not a multiple of 16", 90)),
                     ("mid", yes("m", priority=20)))
    res = host.explain(small_spec)
    assert str(res.plan.backend) == "mid:m"
    declined = next(c for c in res.candidates if c.plugin == "fast")
    assert declined.status == DECLINED and declined.code is Reason.SHAPE_UNALIGNED
    assert "961" in declined.reason
    assert res.to_dict()["candidates"][-2]["code"] in {r.value for r in Reason}


def test_reference_is_last_resort(small_spec):
    res = host_with(("x", no("k"))).explain(small_spec)
    assert str(res.plan.backend) == "reference:loop"


def test_preference_breaks_priority_ties_then_names(small_spec):
    p = make_plugin([Variant("v1", 10), Variant("v2", 10)],
                    lambda s: [Verdict.yes("v1", preference=0.0), Verdict.yes("v2", preference=1.0)])
    assert host_with(("p", p)).resolve(small_spec).variant == "v2"
    # equal priority and preference: alphabetical by plugin, then variant
    assert host_with(("zz", yes("a")), ("aa", yes("a"))).resolve(small_spec).plugin == "aa"


@pytest.mark.parametrize("order", list(itertools.permutations(["a", "b", "c"])))
def test_outcome_does_not_depend_on_registration_order(order, small_spec):
    plugins = {"a": yes("x", priority=5), "b": yes("x", priority=5), "c": no("x", priority=99)}
    res = host_with(*[(n, plugins[n]) for n in order]).explain(small_spec)
    assert str(res.plan.backend) == "a:x"
    assert [str(c.backend) for c in res.candidates] == ["a:x", "b:x", "reference:loop", "c:x",
                                                   "reference:grouped_mm"]


def test_v1_v2_choice_comes_from_declared_layouts_and_the_a2a_mode(small_spec):
    """S3's shape: neither variant mentions a2a modes; the host matches layouts."""
    variants = [Variant("v1", 20, layouts=(Layout.MASKED,)), Variant("v2", 20, layouts=(Layout.STANDARD,))]
    host = host_with(("cute", make_plugin(variants, lambda s: [Verdict.yes("v1"), Verdict.yes("v2")])))
    res = host.explain(small_spec)
    assert res.plan.variant == "v2"
    assert next(c for c in res.candidates if c.variant == "v1").code is Reason.LAYOUT_UNSUPPORTED
    ll = small_spec.replace(a2a="deepep_ll", ep_size=2, tp_size=2)
    plan = host.resolve(ll)
    assert plan.variant == "v1" and plan.dispatch.layout is Layout.MASKED


def test_nothing_fits_lists_every_candidate_and_reason(small_spec):
    host = host_with(("a", no("k", "needs SM100, found cpu", code=Reason.ARCH_UNSUPPORTED)),
                     ("b", no("j", "deep_gemm missing", code=Reason.DEPENDENCY_MISSING)),
                     reference=False)
    with pytest.raises(NoBackendError) as e:
        host.resolve(small_spec)
    msg = str(e.value)
    assert "a:k: (arch_unsupported) needs SM100, found cpu" in msg
    assert "b:j: (dependency_missing) deep_gemm missing" in msg
    assert e.value.resolution.plan is None


def test_force_by_argument_and_env(monkeypatch, small_spec):
    host = host_with(("fast", yes("k", priority=90)), ("slow", yes("k", priority=5)))
    assert host.resolve(small_spec).plugin == "fast"
    res = host.explain(small_spec, force="slow")
    assert res.plan.plugin == "slow" and statuses(res)["fast:k"] == NOT_FORCED
    assert next(c for c in res.candidates if c.plugin == "fast").code is Reason.NOT_FORCED
    monkeypatch.setenv("MOE_BACKEND", "reference:loop")
    assert str(host.resolve(small_spec).backend) == "reference:loop"


def test_forcing_an_unsupported_backend_is_an_error_with_its_reason(small_spec):
    host = host_with(("fast", no("k", "hidden 128 is below the kernel's 256")))
    with pytest.raises(BackendUnavailable, match="hidden 128 is below the kernel's 256"):
        host.resolve(small_spec, force="fast")
    with pytest.raises(ResolutionError, match="no plugin named 'nosuch'.*installed: fast, reference"):
        host.resolve(small_spec, force="nosuch")


def test_disable_by_argument_and_env(monkeypatch, small_spec):
    host = host_with(("fast", yes("k", priority=90)))
    res = host.explain(small_spec, disable=["fast"])
    assert res.plan.plugin == "reference" and statuses(res)["fast:k"] == DISABLED
    assert next(c for c in res.candidates if c.plugin == "fast").code is Reason.DISABLED
    monkeypatch.setenv("MOE_DISABLE", "fast:k, reference:grouped_mm")
    assert host.resolve(small_spec).plugin == "reference"
    with pytest.raises(BackendUnavailable):
        host.resolve(small_spec, force="fast")  # forced but disabled: never silent


def test_a_raising_plugin_is_broken_and_the_others_proceed(small_spec):
    def boom(spec):
        raise RuntimeError("cuda driver too old")
    host = host_with(("bad", make_plugin(one("k", 99), boom)), ("good", yes("g")))
    res = host.explain(small_spec)
    assert res.plan.plugin == "good"
    bad = next(c for c in res.candidates if c.plugin == "bad")
    assert bad.status == BROKEN and "RuntimeError: cuda driver too old" in bad.reason
    assert bad.code is Reason.BROKEN


@pytest.mark.parametrize("answer, message", [
    (lambda s: "yes", "expected a list of Verdict"),
    (lambda s: [], "expected exactly one verdict"),
    (lambda s: [Verdict.yes("k"), Verdict.yes("other")], "expected exactly one verdict"),
    (lambda s: [Verdict.no("k", Reason.SHAPE_UNALIGNED, "  ")], "expected a non-empty reason"),
    (lambda s: [Verdict.yes("k", preference="high")], "expected a finite number"),
    (lambda s: [Verdict.no("k", "shape_unaligned", "x is 3")], "expected a moe_core.Reason"),
    (lambda s: [Verdict.yes("k", padded_intermediate=8)], "padded_intermediate 8"),
    (lambda s: [Verdict.yes("k", overlap=Overlap(sbo=True))], "enables what the spec did not request"),
])
def test_contract_violations_make_a_broken_candidate(answer, message, small_spec):
    res = host_with(("bad", make_plugin(one("k", 99), answer))).explain(small_spec)
    bad = next(c for c in res.candidates if c.plugin == "bad")
    assert bad.status == BROKEN and message in bad.reason
    assert res.plan.plugin == "reference"


def test_configure_dispatcher_failure_falls_through(small_spec):
    def fail(plan, d):
        raise ValueError("no fp8 dispatch here")
    host = host_with(("a", make_plugin(one("k", 50), lambda s: [Verdict.yes("k")], dispatcher=fail)),
                     ("b", yes("j", priority=20)))
    res = host.explain(small_spec.replace(a2a="torch_a2a", ep_size=2, tp_size=2))
    assert res.plan.plugin == "b"
    assert statuses(res)["a:k"] == BROKEN
    assert host.resolve(small_spec).plugin == "a"  # tokens stay on the rank: nothing to configure


def test_dispatch_lands_in_the_plan_frozen(small_spec):
    spec = small_spec.replace(a2a="deepep_ll", tp_size=2, ep_size=2)
    plan = host_with(("a", yes("k", priority=50))).resolve(spec)
    assert (plan.dispatch.layout, plan.dispatch.wire.value) == (Layout.MASKED, "bf16")
    with pytest.raises(ValueError, match="'int4' is not a valid Wire"):
        dataclasses.replace(plan.dispatch, wire="int4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.dispatch.wire = "fp8"


def test_plan_records_padding_options_and_is_immutable(small_spec):
    p = make_plugin(one("k", 50), lambda s: [Verdict.yes("k", padded_intermediate=112, tile=64)])
    plan = host_with(("pad", p)).resolve(small_spec)
    assert plan.intermediate_padded == 112 and plan.padded and plan.option("tile") == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.variant = "other"
    assert hash(plan.spec) == hash(small_spec.replace())


def test_overlap_is_decided_once_in_the_plan(small_spec):
    """S5: SBO on with down-GEMM overlap requested but not offered: the plan says off, with why."""
    spec = small_spec.replace(sbo=True, down_gemm_overlap=True)
    plan = host_with().resolve(spec)
    assert plan.overlap.sbo and not plan.overlap.down_gemm
    assert "no down-GEMM overlap" in plan.overlap.reason
    offering = make_plugin(one("k", 50), lambda s: [
        Verdict.yes("k", overlap=Overlap(sbo=s.sbo, down_gemm=s.down_gemm_overlap))])
    assert host_with(("o", offering)).resolve(spec).overlap.down_gemm


def test_resolution_is_cached_per_spec_and_options(small_spec):
    calls = []
    p = make_plugin(one("k"), lambda s: calls.append(s) or [Verdict.yes("k")])
    host = host_with(("p", p))
    first = host.resolve(small_spec)
    assert host.resolve(small_spec.replace()) is first
    host.resolve(small_spec, disable="p")
    assert len(calls) == 1  # verdicts are cached per spec, across force/disable
    host.resolve(small_spec.replace(max_tokens=8))
    assert len(calls) == 2


def test_register_rejects_bad_declarations():
    host = host_with(
        ("dup", make_plugin([Variant("a", 1), Variant("a", 2)], lambda s: [])),
        ("notalist", make_plugin("a", lambda s: [])),
    )
    recs = {r.name: r for r in host.registry}
    assert "declares a variant name twice" in recs["dup"].error
    assert "expected a list of Variant" in recs["notalist"].error
    with pytest.raises(ValueError, match="expected an int"):
        Variant("a", 1.5)
    with pytest.raises(ValueError, match="'diagonal' is not a valid Layout"):
        Variant("a", 1, layouts=("diagonal",))
    with pytest.raises(PluginError, match="already registered"):
        host.registry.register(object(), "reference")


def test_empty_force_and_disable_ignore_the_environment(monkeypatch, small_spec):
    host = host_with(("fast", yes("k", priority=90)))
    monkeypatch.setenv("MOE_BACKEND", "reference")
    monkeypatch.setenv("MOE_DISABLE", "fast")
    assert host.resolve(small_spec).plugin == "reference"
    assert host.resolve(small_spec, force="", disable=()).plugin == "fast"


def test_a_rejection_needs_a_code_and_a_detail():
    assert Verdict.no("k", Reason.SHAPE_UNALIGNED, "hidden 200 is not a multiple of 64").code \
        is Reason.SHAPE_UNALIGNED
    with pytest.raises(TypeError, match="expected a detail"):
        Verdict.no("k", Reason.SHAPE_UNALIGNED)
    with pytest.raises(ValueError, match="needs a Reason code"):
        Verdict("k", False, "no code given")
    with pytest.raises(TypeError, match="expected a bool"):
        Verdict("k", 1, "truthy is not yes")


def test_the_old_text_only_rejection_still_works_with_a_fallback_code(small_spec):
    with pytest.warns(DeprecationWarning, match="without a Reason code is deprecated"):
        v = Verdict.no("k", "bf16 only, this is fp8")
    assert v.code is Reason.UNSPECIFIED and v.reason == "bf16 only, this is fp8"
    legacy = make_plugin(one("k", 50), lambda s: [Verdict.no("k", "bf16 only, this is fp8")])
    with pytest.warns(DeprecationWarning):
        res = host_with(("old", legacy)).explain(small_spec)
    assert next(c for c in res.candidates if c.plugin == "old").code is Reason.UNSPECIFIED


def test_other_plugins_hook_wrappers_see_each_call(small_spec):
    from moe_core import hookimpl

    seen = []

    class Tracer:
        @hookimpl(wrapper=True)
        def supports_shape(self, spec):
            answer = yield
            seen.append((spec, [v.variant for v in answer[0]]))  # one plugin: one list
            return answer

        @hookimpl
        def moe_variants(self):
            return []

    host = host_with(("tracer", Tracer()), ("fast", yes("k", priority=90)))
    assert host.resolve(small_spec).plugin == "fast"
    assert (small_spec, ["k"]) in seen and (small_spec, ["grouped_mm", "loop"]) in seen


def test_a_failing_plugin_cannot_hide_another_through_a_wrapper(small_spec):
    def boom(spec):
        raise RuntimeError("mine alone")
    host = host_with(("bad", make_plugin(one("k", 99), boom)), ("good", yes("g", priority=50)))
    res = host.explain(small_spec)
    assert res.plan.plugin == "good" and statuses(res)["bad:k"] == BROKEN


def test_assume_installed_gives_the_right_plan_in_the_same_process(small_spec):
    from moe_core import assume_installed

    needs = make_plugin([Variant("k", 90, requires=("no_such_kernel_lib",))], lambda s: [Verdict.yes("k")])
    host = host_with(("needs", needs))
    res = host.explain(small_spec)
    assert res.plan.plugin == "reference"
    k = next(c for c in res.candidates if c.plugin == "needs")
    assert k.code is Reason.DEPENDENCY_MISSING and "no_such_kernel_lib not importable" in k.reason
    with assume_installed("no_such_kernel_lib"):
        planned = host.explain(small_spec)
        assert planned.plan.plugin == "needs"
        assert "no_such_kernel_lib" in planned.to_dict()["environment"]["assumed"]
        assert planned.environment.fingerprint != res.environment.fingerprint
    assert host.explain(small_spec) is res  # cached under its own environment


def test_the_environment_is_frozen_probed_once_and_fingerprinted():
    import dataclasses as dc

    host = host_with()
    env = host.env
    with pytest.raises(dc.FrozenInstanceError):
        env.torch = "0"
    assert env.fingerprint == host_with().env.fingerprint  # stable across hosts
    assert len(env.fingerprint) == 16
