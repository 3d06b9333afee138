"""Shared fixtures: hosts built from in-test plugins, so resolution is tested in isolation."""

from __future__ import annotations

import pytest

from moe_core import Host, MoESpec, Variant, hookimpl
from moe_core.reference import plugin as reference_plugin
from moe_core.registry import Registry


def make_plugin(variants, answer, *, dispatcher=None, runner=None, process=None):
    """A plugin object: ``answer(spec) -> [Verdict]``; the optional hooks as plain functions."""
    from moe_core.reference.experts import ReferenceRunner

    hooks = {
        "moe_variants": lambda self: variants,
        "supports_shape": lambda self, spec: answer(spec),
        "make_runner": lambda self, plan, weights: (runner or ReferenceRunner)(plan, weights),
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


def host_with(*named_plugins, reference=True) -> Host:
    """A host whose registry holds the reference backend and ``(name, plugin)`` pairs."""
    reg = Registry()
    if reference:
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
