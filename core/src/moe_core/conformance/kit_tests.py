"""The conformance checks, collected when ``--moe-conformance`` names plugins."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings

from moe_core import Quant, SpecError, bundled_models, spec_for_model
from moe_core.conformance.checks import check_run, not_runnable_here, plugin_candidates
from moe_core.conformance.strategies import edge_specs, specs
from moe_core.registry import PluginStatus

ARCHS = ["cpu", "sm90", "sm100"]
#: Keep model slices small on a CPU: at most this many elements per expert matrix.
SLICE_ELEMENTS = 4_000_000


def _supported(cands):
    return [c for c in cands if c.supported]


def test_declarations(moe_host, moe_plugin):
    rec = moe_host.registry.records.get(moe_plugin)
    assert rec is not None, f"plugin {moe_plugin!r} is not installed"
    assert rec.status is PluginStatus.OK, f"plugin {moe_plugin!r} is broken: {rec.error}"
    for v in rec.variants:
        assert v.summary.strip(), f"variant {moe_plugin}:{v.name} has no summary"


@pytest.mark.parametrize("quant", [q.value for q in Quant])
@pytest.mark.parametrize("arch", ARCHS)
def test_honest_on_random_specs(moe_host, moe_plugin, arch, quant, pytestconfig):
    """Every "no" has a specific reason; every "yes" runs and matches the reference."""
    skipped = []

    @settings(max_examples=pytestconfig.getoption("moe_conformance_examples"), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
              database=None)
    @given(specs(arch, Quant(quant)))
    def check(spec):
        for cand in _supported(plugin_candidates(moe_host, moe_plugin, spec)):
            why = not_runnable_here(spec)
            if why:
                skipped.append(why)
            else:
                check_run(moe_host, cand.backend, spec)

    for edge in edge_specs(arch, Quant(quant)):
        check = example(edge)(check)
    check()
    if skipped:
        pytest.skip(f"declarations checked; {len(skipped)} supported runs not run: {skipped[0]}")


def _model_slices(arch):
    for name, model in bundled_models().items():
        per_matrix = model.expert_hidden * model.moe_intermediate_size
        tp = next((t for t in (1, 2, 4, 8, 16) if per_matrix // t <= SLICE_ELEMENTS), 16)
        try:
            yield spec_for_model(model, tp=tp, experts=2, arch=arch, max_tokens=8)
        except SpecError:
            continue  # a tp that does not divide this model's size: not a plugin matter


@pytest.mark.parametrize("arch", ARCHS)
def test_honest_on_bundled_model_slices(moe_host, moe_plugin, arch):
    skipped = []
    for spec in _model_slices(arch):
        for cand in _supported(plugin_candidates(moe_host, moe_plugin, spec)):
            why = not_runnable_here(spec)
            if why:
                skipped.append(why)
            else:
                check_run(moe_host, cand.backend, spec, tokens=8)
    if skipped:
        pytest.skip(f"declarations checked; {len(skipped)} supported runs not run: {skipped[0]}")
