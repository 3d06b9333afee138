"""Shared fixtures: hosts built from in-test plugins, so resolution is tested in isolation."""

from __future__ import annotations

import pytest

from moe_core import Host, MoESpec, Variant, hookimpl
from moe_core.reference import plugin as reference_plugin
from moe_core.registry import Registry


def make_dispatcher_plugin(variants, answer, build=None):
    """A dispatcher plugin: ``answer(spec, dispatch) -> [Verdict]``, ``build(plan, group)``."""
    hooks = {
        "moe_variants": lambda self: variants,
        "supports_dispatch": lambda self, spec, dispatch: answer(spec, dispatch),
        "make_dispatcher": lambda self, plan, group: (build or (lambda p, g: None))(plan, group),
    }
    return type("DispatcherPlugin", (), {k: hookimpl(v) for k, v in hooks.items()})()


def make_plugin(variants, answer, *, dispatcher=None, runner=None, process=None):
    """A plugin object: ``answer(spec) -> [Verdict]``; the optional hooks as plain functions."""
    from moe_core.reference.experts import ReferenceRunner

    hooks = {
        "moe_variants": lambda self: variants,
        "supports_shape": lambda self, spec: answer(spec),
        "make_runner": lambda self, plan, weights: (runner or ReferenceRunner)(plan, weights),
        "probe_environment": lambda self: {"test.probed": "yes"},
    }
    if dispatcher is not None:
        hooks["configure_dispatcher"] = _configure(dispatcher)
    if process is not None:
        hooks["process_weights"] = lambda self, plan, weights: process(plan, weights)
    return type("Plugin", (), {k: hookimpl(v) for k, v in hooks.items()})()


def _configure(fn):
    def configure_dispatcher(self, plan, dispatcher):
        return fn(plan, dispatcher)
    return configure_dispatcher


def host_with(*named_plugins, reference=True, torch_dispatch=True) -> Host:
    """A host whose registry holds the reference backend, the torch dispatcher and
    ``(name, plugin)`` pairs."""
    reg = Registry.builtin() if reference and torch_dispatch else Registry()
    if reference and not torch_dispatch:
        reg.register(reference_plugin, "reference")
    for name, plugin in named_plugins:
        reg.register(plugin, name)
    return Host(reg)


def one(name, priority=10):
    return [Variant(name, priority)]


@pytest.fixture
def small_spec():
    return MoESpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=96)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("MOE_BACKEND", raising=False)
    monkeypatch.delenv("MOE_DISABLE", raising=False)
    # `moe --debug` sets it for the process (tests invoke the CLI in-process)
    monkeypatch.delenv("MOE_DEBUG", raising=False)
