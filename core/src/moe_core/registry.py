"""Plugin discovery through the ``moe_core.plugins`` entry-point group.

A plugin that fails to import, fails pluggy's hook validation or declares its variants
badly is kept as a *broken* record with its error, so ``moe plugins`` and ``moe explain``
can show it; the others are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .declare import Variant, VariantKind
from .errors import PluginError
from .isolation import HookFailed, HookTimeout, timeout_from_env
from .isolation import call as isolated

#: moe-core's own plugins: these names belong to these modules, whatever else is installed.
BUILTIN = {"reference": "moe_core.reference.plugin", "torch": "moe_core.torch_dispatch.plugin"}
#: Hooks a plugin must implement for each kind of variant it declares.
_REQUIRED_HOOKS = {VariantKind.RUNNER: ("supports_shape", "make_runner"),
                   VariantKind.DISPATCHER: ("supports_dispatch", "make_dispatcher")}


class PluginStatus(StrEnum):
    OK = "ok"
    BROKEN = "broken"


@dataclass(frozen=True)
class PluginRecord:
    name: str
    status: PluginStatus
    variants: tuple[Variant, ...] = ()
    distribution: str | None = None
    version: str | None = None
    source: str = ""  # the entry point's value, or "registered in code"
    error: str | None = None

    @property
    def runner_variants(self) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.kind is VariantKind.RUNNER)

    @property
    def dispatcher_variants(self) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.kind is VariantKind.DISPATCHER)


def _describe_exc(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _check_variants(name: str, declared: Any) -> tuple[Variant, ...]:
    if not isinstance(declared, (list, tuple)) or not all(isinstance(v, Variant) for v in declared):
        raise PluginError(f"moe_variants() of {name!r} returned {declared!r}; expected a list of Variant")
    names = [v.name for v in declared]
    if len(set(names)) != len(names):
        raise PluginError(f"moe_variants() of {name!r} declares a variant name twice: {names}")
    return tuple(declared)


class Registry:
    """The plugin manager plus a record per plugin, broken ones included."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}

    @classmethod
    def discover(cls, group: str = hookspecs.ENTRY_POINT_GROUP) -> "Registry":
        reg = cls()
        # The built-ins first (an impostor of a reserved name is the broken one), then
        # sorted, so which of two same-named plugins wins never depends on install order.
        eps = sorted(entry_points(group=group),
                     key=lambda e: (BUILTIN.get(e.name) != e.value, e.name, e.value))
        for ep in eps:
            reg.load_entry_point(ep)
        return reg

    @classmethod
    def builtin(cls) -> "Registry":
        """A registry holding only moe-core's own plugins: the reference backend
        (``reference``) and the torch.distributed dispatcher (``torch``)."""
        from .reference import plugin as reference
        from .torch_dispatch import plugin as torch_dispatch

        reg = cls()
        reg.register(reference, "reference", distribution="moe-core")
        reg.register(torch_dispatch, "torch", distribution="moe-core")
        return reg

    def load_entry_point(self, ep: EntryPoint) -> PluginRecord:
        dist = getattr(ep, "dist", None)
        meta = dict(distribution=dist.name if dist else None,
                    version=dist.version if dist else None, source=ep.value)
        if ep.name in BUILTIN and ep.value != BUILTIN[ep.name]:
            return self._broken(f"{ep.name}@{meta['distribution']}", meta,
                                f"plugin name {ep.name!r} is reserved for moe-core's built-in "
                                f"{BUILTIN[ep.name]} (pick another entry-point name)")
        if ep.name in self.records:
            other = self.records[ep.name]
            return self._broken(f"{ep.name}@{meta['distribution']}", meta,
                                f"plugin name {ep.name!r} is already taken by "
                                f"{other.distribution or other.source}")
        try:
            obj = isolated(ep.load, 0)  # no limit: a first import may legitimately take long
        except HookFailed as e:  # an import may raise anything, SystemExit included
            return self._broken(ep.name, meta, f"import failed: {e}")
        return self.register(obj, ep.name, **meta)

    def register(self, obj: Any, name: str, *, distribution: str | None = None,
                 version: str | None = None, source: str = "registered in code") -> PluginRecord:
        """Register a plugin object (a module or instance implementing the hooks)."""
        meta = dict(distribution=distribution, version=version, source=source)
        if name in self.records:
            raise PluginError(f"plugin name {name!r} is already registered")
        try:
            self.pm.register(obj, name=name)
        except Exception as e:
            return self._broken(name, meta, f"hook validation failed: {_describe_exc(e)}")
        try:
            declared = isolated(lambda: self.call(name, "moe_variants"), timeout_from_env())
            variants = _check_variants(name, declared)
            for kind in sorted({v.kind for v in variants}):
                for hook in _REQUIRED_HOOKS[kind]:
                    if not self._implements(name, hook):
                        raise PluginError(f"declares {kind} variants but implements no {hook} hook")
        except Exception as e:
            self.pm.unregister(name=name)
            why = f"moe_variants {e}" if isinstance(e, HookTimeout) else (
                str(e) if isinstance(e, HookFailed) else _describe_exc(e))
            return self._broken(name, meta, why)
        rec = PluginRecord(name, PluginStatus.OK, variants, **meta)
        self.records[name] = rec
        return rec

    def mark_broken(self, name: str, error: str) -> None:
        """Take plugin ``name`` out of resolution after it broke the contract outside a
        per-spec hook (its record keeps the error)."""
        rec = self.records[name]
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self._broken(name, dict(distribution=rec.distribution, version=rec.version,
                                source=rec.source), error)

    def _broken(self, name: str, meta: dict[str, Any], error: str) -> PluginRecord:
        rec = PluginRecord(name, PluginStatus.BROKEN, (), error=error, **meta)
        self.records[name] = rec
        return rec

    def _implements(self, name: str, hook: str) -> bool:
        plugin = self.pm.get_plugin(name)
        return any(i.plugin is plugin for i in getattr(self.pm.hook, hook).get_hookimpls())

    def call(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` on plugin ``name`` alone; None when it does not implement it.

        The other plugins' implementations are left out, so one plugin's answer (or raise)
        stays its own, but their hook wrappers run around it and pluggy's tracing sees the
        call, as for any pluggy hook call.
        """
        caller = getattr(self.pm.hook, hook)
        plugin = self.pm.get_plugin(name)
        impls = [i for i in caller.get_hookimpls()
                 if i.plugin is plugin or i.wrapper or i.hookwrapper]
        if not any(i.plugin is plugin and not (i.wrapper or i.hookwrapper) for i in impls):
            return None
        firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
        # HookCaller._hookexec is the plugin manager's executor, wrapped by its tracing
        # and monitoring; pluggy has no public call over a chosen list of implementations.
        result = caller._hookexec(hook, impls, kwargs, firstresult)
        if not firstresult:
            return result[0] if result else None
        return result

    def ok(self) -> list[PluginRecord]:
        return [r for r in sorted(self.records.values(), key=lambda r: r.name)
                if r.status is PluginStatus.OK]

    def __iter__(self) -> Iterable[PluginRecord]:
        return iter(sorted(self.records.values(), key=lambda r: r.name))
