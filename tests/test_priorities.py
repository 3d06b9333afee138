"""One truth for priorities: the Variant docstring, the backend guide, the example plugin,
the `moe new-plugin` template and the in-repo plugins' declarations agree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from moe_core import Variant
from moe_core.cli.new_plugin import render
from moe_core.registry import Registry

ROOT = Path(__file__).parents[1]
GUIDE = ROOT / "docs" / "writing-a-backend.md"
EXAMPLE = ROOT / "examples" / "moe-plugin-example" / "src"

#: (kind, band) -> the plugins whose runner (or dispatcher) variants belong in it.
BANDS = {("runners", (0, 1)): {"reference"},
         ("runners", (2, 19)): {"example", "template"},
         ("runners", (20, 39)): {"deepgemm", "flashinfer_cutlass", "flashinfer_cutedsl", "triton"},
         ("dispatchers", None): {"torch", "deepep"}}


def _flat(text: str) -> str:
    """Markdown or reST without markup: backticks, dashes and whitespace normalised."""
    return " ".join(text.replace("`", "").replace("–", "-").split())


def _declared() -> dict[str, list[Variant]]:
    """Every variant of the in-repo plugins, the example and the template, by plugin."""
    registry = Registry.discover()
    out = {r.name: list(r.variants) for r in registry.ok()}
    sys.path.insert(0, str(EXAMPLE))
    try:
        import moe_plugin_example
    finally:
        sys.path.remove(str(EXAMPLE))
    out["example"] = moe_plugin_example.moe_variants()
    namespace: dict = {}
    exec(render("prio_check")["src/moe_plugin_prio_check/__init__.py"], namespace)
    out["template"] = namespace["moe_variants"]()
    return out


def _phrases(plugin: str, variants: list[Variant]) -> list[str]:
    """How the docstring and the guide state a plugin's priorities: ``reference:loop 0``,
    ``torch:all_to_all 10`` (one variant), ``deepgemm 30-31`` (several)."""
    if plugin == "reference":
        return [f"reference:{v.name} {v.priority}" for v in variants]
    prios = sorted({v.priority for v in variants})
    number = "-".join(str(p) for p in dict.fromkeys((prios[0], prios[-1])))
    name = (f"{plugin}:{variants[0].name}" if len(variants) == 1 else plugin)
    return [f"{'the moe new-plugin template' if plugin == 'template' else name} {number}"]


@pytest.fixture(scope="module")
def declared():
    got = _declared()
    expected = set().union(*BANDS.values())
    assert expected <= set(got), f"missing plugins: {expected - set(got)} (run `make dev`)"
    return got


@pytest.fixture(scope="module", params=["Variant docstring", "guide"])
def text(request):
    return _flat(Variant.__doc__ if request.param == "Variant docstring" else GUIDE.read_text())


def test_every_priority_lies_in_its_band(declared):
    for (kind, band), plugins in BANDS.items():
        for plugin in plugins:
            for v in declared[plugin]:
                assert (v.kind == "dispatcher") == (kind == "dispatchers"), f"{plugin}:{v.name}"
                if band:
                    assert band[0] <= v.priority <= band[1], \
                        f"{plugin}:{v.name} has priority {v.priority}, outside {kind} {band}"


def test_the_docstring_and_the_guide_state_each_band_and_priority(declared, text):
    for kind, band in BANDS:
        if band:
            assert f"{kind} {band[0]}-{band[1]}" in text or f"{kind} | {band[0]}-{band[1]}" in text
    assert "runners 40 and up" in text or "runners | 40 and up" in text
    for plugin in set().union(*BANDS.values()):
        for phrase in _phrases(plugin, declared[plugin]):
            assert phrase in text, f"expected {phrase!r}"
