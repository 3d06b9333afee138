"""Entry-point discovery: every plugin is found, a broken one is reported, not fatal."""

from __future__ import annotations

import textwrap
from importlib.metadata import EntryPoint

import pytest

import moe_core.registry as registry_mod
from moe_core import Host
from moe_core.registry import PluginStatus, Registry


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module, body):
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    return write


def discover_with(monkeypatch, eps):
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: eps)
    return Registry.discover()


def ep(name, value):
    return EntryPoint(name, value, "moe_core.plugins")


GOOD = """
    from moe_core import Variant, Verdict, hookimpl
    @hookimpl
    def moe_variants():
        return [Variant("v", 40)]
    @hookimpl
    def supports_shape(spec):
        return [Verdict.yes("v", "good plugin")]
    @hookimpl
    def make_runner(plan, weights):
        from moe_core.reference.experts import ReferenceRunner
        return ReferenceRunner(plan, weights)
"""


def test_installed_in_tree_plugins_are_discovered():
    names = {r.name: r for r in Registry.discover()}
    assert {"reference", "deepgemm", "flashinfer_cutlass", "flashinfer_cutedsl", "deepep"} <= set(names)
    assert names["reference"].distribution == "moe-core"
    assert names["flashinfer_cutedsl"].distribution == "moe-plugin-cutedsl"
    assert all(r.status == PluginStatus.OK for r in names.values())


def test_broken_plugins_are_reported_and_the_rest_work(monkeypatch, plugin_dir, small_spec):
    plugin_dir("p_good", GOOD)
    plugin_dir("p_import", "raise ImportError('libcuda.so.1: cannot open shared object file')\n")
    plugin_dir("p_exit", "import sys\nsys.exit(3)\n")
    plugin_dir("p_badhook", """
        from moe_core import hookimpl
        @hookimpl
        def supports_shape(spec, extra_arg):
            return []
    """)
    plugin_dir("p_norunner", """
        from moe_core import Variant, hookimpl
        @hookimpl
        def moe_variants():
            return [Variant("v", 1)]
        @hookimpl
        def supports_shape(spec):
            return []
    """)
    reg = discover_with(monkeypatch, [
        ep("zgood", "p_good"), ep("imp", "p_import"), ep("exit", "p_exit"), ep("hook", "p_badhook"),
        ep("norun", "p_norunner"), ep("missing", "p_does_not_exist"),
        ep("reference", "moe_core.reference.plugin")])
    recs = {r.name: r for r in reg}
    assert recs["zgood"].status == PluginStatus.OK and recs["reference"].status == PluginStatus.OK
    assert "libcuda.so.1" in recs["imp"].error and recs["imp"].status == PluginStatus.BROKEN
    assert "SystemExit" in recs["exit"].error
    assert "hook validation failed" in recs["hook"].error and "extra_arg" in recs["hook"].error
    assert "implements no make_runner" in recs["norun"].error
    assert "ModuleNotFoundError" in recs["missing"].error
    res = Host(reg).explain(small_spec)
    assert str(res.plan.backend) == "zgood:v"
    broken = {c.plugin for c in res.candidates if c.status == "broken"}
    assert broken == {"imp", "exit", "hook", "norun", "missing"}


def test_two_distributions_with_one_name_keep_the_first_sorted(monkeypatch, plugin_dir):
    plugin_dir("p_good", GOOD)
    reg = discover_with(monkeypatch, [ep("same", "p_good"), ep("same", "moe_core.reference.plugin")])
    recs = list(reg)
    assert [r.status for r in recs] == [PluginStatus.OK, PluginStatus.BROKEN]
    assert recs[0].source == "moe_core.reference.plugin"  # sorted by (name, value), not install order
    assert "already taken" in recs[1].error
