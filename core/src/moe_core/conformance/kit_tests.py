"""The conformance checks, collected when ``--moe-conformance`` names plugins.

Every random draw is seeded (``--moe-conformance-seed``, printed in the report header), so
two runs check the same specs, and a failure's ``reproduce:`` line re-runs its one check.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, seed, settings

from moe_core import Quant, Reason, SpecError, bundled_models, spec_for_model
from moe_core.conformance.checks import (check_round_trips, check_run, dispatch_configs,
                                         dispatcher_candidates, not_runnable_here, plugin_candidates,
                                         round_trip_skip_reason)
from moe_core.conformance.strategies import MOVING, dispatch_edge_specs, edge_specs, specs
from moe_core.registry import PluginStatus

ARCHS = ["cpu", "sm90", "sm100"]
#: Keep model slices small on a CPU: at most this many elements per expert matrix.
SLICE_ELEMENTS = 4_000_000
#: A dispatcher moves hidden-size rows: its model slices keep a model's hidden size, top-k
#: and format, with this intermediate size (small weights, quick round trips).
DISPATCH_SLICE_INTERMEDIATE = 64
#: Declines the host derives from a dispatcher variant's declarations.
HOST_DERIVED = {Reason.MODE_UNSUPPORTED, Reason.LAYOUT_UNSUPPORTED, Reason.WIRE_UNSUPPORTED}


def _supported(cands):
    return [c for c in cands if c.supported]


def _random(kit, strategy, edges):
    """Decorates a check of one spec: seeded random specs, after the edge ones."""
    def wrap(fn):
        check = settings(max_examples=kit.examples, deadline=None, database=None,
                         report_multiple_bugs=False, print_blob=False,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])(
            seed(kit.seed)(given(strategy)(fn)))
        for edge in reversed(edges):  # hypothesis runs the outermost example first
            check = example(edge)(check)
        return check
    return wrap


def _skip_unless_ran(skipped, what="runs"):
    if skipped:
        pytest.skip(f"declarations checked; {len(skipped)} supported {what} not run: {skipped[0]}")


def test_declarations(moe_host, moe_plugin):
    rec = moe_host.registry.records.get(moe_plugin)
    assert rec is not None, f"plugin {moe_plugin!r} is not installed"
    assert rec.status is PluginStatus.OK, f"plugin {moe_plugin!r} is broken: {rec.error}"
    for v in rec.variants:
        assert v.summary.strip(), f"variant {moe_plugin}:{v.name} has no summary"


@pytest.mark.parametrize("quant", [q.value for q in Quant])
@pytest.mark.parametrize("arch", ARCHS)
def test_honest_on_random_specs(moe_kit, moe_plugin, arch, quant):
    """Every "no" has a specific reason; every "yes" runs and matches the reference."""
    host, skipped = moe_kit.host, []

    @_random(moe_kit, specs(arch, Quant(quant)), edge_specs(arch, Quant(quant)))
    def check(spec):
        for cand in _supported(plugin_candidates(host, moe_plugin, spec)):
            why = not_runnable_here(spec)
            if why:
                skipped.append(why)
            else:
                check_run(host, cand.backend, spec, seed=moe_kit.seed)

    with moe_kit.reported():
        check()
    _skip_unless_ran(skipped)


def _model_slices(arch):
    for name, model in bundled_models().items():
        per_matrix = model.expert_hidden * model.moe_intermediate_size
        tp = next((t for t in (1, 2, 4, 8, 16) if per_matrix // t <= SLICE_ELEMENTS), 16)
        try:
            yield spec_for_model(model, tp=tp, experts=2, arch=arch, max_tokens=8)
        except SpecError:
            continue  # a tp that does not divide this model's size: not a plugin matter


@pytest.mark.parametrize("arch", ARCHS)
def test_honest_on_bundled_model_slices(moe_kit, moe_plugin, arch):
    host, skipped = moe_kit.host, []
    with moe_kit.reported():
        for spec in _model_slices(arch):
            for cand in _supported(plugin_candidates(host, moe_plugin, spec)):
                why = not_runnable_here(spec)
                if why:
                    skipped.append(why)
                else:
                    check_run(host, cand.backend, spec, tokens=8, seed=moe_kit.seed)
    _skip_unless_ran(skipped)


def _dispatch_slices(arch):
    """Each bundled model's layer over two expert-parallel ranks, in every a2a mode."""
    seen = set()
    for model in bundled_models().values():
        for mode in MOVING:
            try:
                spec = spec_for_model(model, tp=2, ep=2, experts=4, arch=arch, max_tokens=64,
                                      a2a=mode).replace(intermediate_size=DISPATCH_SLICE_INTERMEDIATE)
            except SpecError:
                continue  # a split this model's sizes do not allow: not a plugin matter
            if spec not in seen:
                seen.add(spec)
                yield spec


@pytest.mark.parametrize("arch", ARCHS)
def test_dispatcher_honest(moe_kit, moe_dispatcher_plugin, arch):
    """Over random specs that move tokens and bundled models' dispatch shapes, in every
    layout and wire format the host may ask: every "no" has a code and a specific reason,
    no hook breaks, and every "yes" makes a round trip on a two-process gloo group that
    matches the single-process reference (model slices: one per hidden size and wire format)."""
    host, plugin = moe_kit.host, moe_dispatcher_plugin
    said_yes: dict = {}  # (dispatcher, spec, dispatch) -> None, in the order asked
    declined, seen = [], set()

    def ask(spec, dedupe=False):
        for cfg in dispatch_configs(spec):
            for c in dispatcher_candidates(host, plugin, spec, cfg):
                key = (c.backend, spec.hidden_size, cfg.wire)
                if not c.supported:
                    declined.append(c)
                elif not (dedupe and key in seen):
                    seen.add(key)
                    said_yes.setdefault((c.backend, spec, cfg))

    @_random(moe_kit, specs(arch, moves_tokens=True), dispatch_edge_specs(arch))
    def check(spec):
        ask(spec)

    with moe_kit.reported():
        check()
        for spec in _dispatch_slices(arch):
            ask(spec, dedupe=True)
    cases, skipped = [], []
    for case in said_yes:
        why = round_trip_skip_reason(case[1], case[2])
        (skipped.append(why) if why else cases.append(case))
    counts = moe_kit.round_trips.setdefault(plugin, [0, 0])
    counts[0] += len(cases)
    counts[1] += len(skipped)
    if cases:
        with moe_kit.reported():
            check_round_trips(moe_kit.factory, cases, seed=moe_kit.seed, debug=moe_kit.debug)
    elif skipped:
        _skip_unless_ran(skipped, "dispatches")
    else:
        # The plugin's own or a missing module's reason says more than a mode it does not serve.
        telling = [c for c in declined if c.code not in HOST_DERIVED] or declined
        example_no = f" (e.g. {telling[0].backend}: {telling[0].reason})" if telling else ""
        pytest.skip(f"declarations checked; {plugin} said yes to no dispatch here{example_no}")
