"""The environment resolution depends on, probed once per host and then frozen.

Which kernel modules are importable (and their versions), which are assumed installed
(planning for another machine), what plugins read from the machine (build stamps), and
the torch version. Hooks read these facts from here and never from ``os.environ`` or the
filesystem, so a resolution is a pure function of (spec, environment, options) and can be
cached under that key. The :attr:`Environment.fingerprint` is stable across processes.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib.util
import json
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Iterable, Mapping

#: Comma-separated modules to treat as installed (``moe explain --assume-installed``): plan a
#: deployment's resolution from a machine that lacks its kernel libraries. Read at probe time.
ENV_ASSUME = "MOE_ASSUME_INSTALLED"

_assumed: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("moe_assumed",
                                                                         default=frozenset())


def _split(text: str) -> frozenset[str]:
    return frozenset(m.strip() for m in text.split(",") if m.strip())


@contextmanager
def assume_installed(modules: str | Iterable[str]):
    """Within the block, resolution treats ``modules`` (comma separated) as installed too;
    every host sees it, including one that already resolved the same spec."""
    extra = _split(modules) if isinstance(modules, str) else frozenset(modules)
    token = _assumed.set(_assumed.get() | extra)
    try:
        yield
    finally:
        _assumed.reset(token)


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    found: bool
    version: str | None = None
    #: Why it cannot be imported (None when found).
    error: str | None = None


def _probe_module(name: str) -> Module:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError) as e:
        return Module(name, False, error=f"{name} not importable: {e}")
    if not found:
        return Module(name, False, error=f"{name} not importable: no module named {name!r}")
    dists = metadata.packages_distributions().get(name.split(".")[0], [])
    version = None
    for dist in dists:
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return Module(name, True, version)


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class Environment:
    """What this machine offers resolution; immutable. Build with :meth:`probe`."""

    modules: tuple[Module, ...] = ()
    assumed: frozenset[str] = frozenset()
    #: ``(key, value)`` facts plugins read once from the machine (``probe_environment``).
    facts: tuple[tuple[str, str], ...] = ()
    torch: str | None = None
    python: str = field(default_factory=platform.python_version)
    #: The CUDA device, when probed (``device=True``): name, capability, CUDA version.
    device: tuple[tuple[str, str], ...] = ()

    @classmethod
    def probe(cls, modules: Iterable[str] = (), facts: Mapping[str, str] | None = None, *,
              device: bool = False) -> "Environment":
        dev: tuple[tuple[str, str], ...] = ()
        if device:
            dev = _probe_device()
        return cls(modules=tuple(_probe_module(m) for m in sorted(set(modules))),
                   assumed=_split(os.environ.get(ENV_ASSUME, "")),
                   facts=tuple(sorted((facts or {}).items())), torch=_dist_version("torch"),
                   device=dev)

    def with_assumed(self, extra: frozenset[str]) -> "Environment":
        return self if extra <= self.assumed else replace(self, assumed=self.assumed | extra)

    def current(self) -> "Environment":
        """This environment with the modules of any enclosing :func:`assume_installed`."""
        return self.with_assumed(_assumed.get())

    def missing(self, module: str) -> str | None:
        """None when ``module`` is importable or assumed installed, else why not."""
        if module in self.assumed:
            return None
        for m in self.modules:
            if m.name == module:
                return m.error
        return f"{module} was not probed (declare it in the variant's requires)"

    def fact(self, key: str, default: str | None = None) -> str | None:
        return dict(self.facts).get(key, default)

    def _body(self) -> dict:
        return {"python": self.python, "torch": self.torch,
                "modules": {m.name: (m.version or "found") if m.found else None for m in self.modules},
                "assumed": sorted(self.assumed), "facts": dict(self.facts),
                "device": dict(self.device)}

    def to_dict(self) -> dict:
        return {**self._body(), "fingerprint": self.fingerprint}

    @property
    def fingerprint(self) -> str:
        """A stable hash of everything above (16 hex digits)."""
        return fingerprint_of(self._body())


def fingerprint_of(body: dict) -> str:
    """16 hex digits of sha256 over ``body`` as sorted JSON: stable across processes."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _probe_device() -> tuple[tuple[str, str], ...]:
    import torch

    if not torch.cuda.is_available():
        return (("name", "cpu"),)
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    return (("name", props.name), ("sm", f"{major}{minor}"), ("cuda", str(torch.version.cuda)))
