"""Cheap checks that a kernel library is present, without importing it."""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from functools import lru_cache

#: Comma-separated modules to treat as installed (``moe explain --assume-installed``): plan a
#: deployment's resolution from a machine that lacks its kernel libraries.
ENV_ASSUME = "MOE_ASSUME_INSTALLED"


def assumed_installed() -> frozenset[str]:
    return frozenset(m.strip() for m in os.environ.get(ENV_ASSUME, "").split(",") if m.strip())


@contextmanager
def assume_installed(modules: str):
    """Within the block, treat the comma-separated ``modules`` as installed too."""
    before = os.environ.get(ENV_ASSUME)
    os.environ[ENV_ASSUME] = ",".join(filter(None, [before, modules]))
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENV_ASSUME]
        else:
            os.environ[ENV_ASSUME] = before


_asked: set[str] = set()


def asked_modules() -> frozenset[str]:
    """Every module a plugin has asked :func:`missing_module` about in this process (so
    ``--assume-installed`` can tell a typo from a third-party plugin's module)."""
    return frozenset(_asked)


def missing_module(name: str) -> str | None:
    """None when ``name`` can be imported (or is assumed installed), else a reason such as
    ``"deep_gemm not importable: no module named 'deep_gemm'"``. Finds, never imports."""
    _asked.add(name)
    if name in assumed_installed():
        return None
    return _find(name)


@lru_cache(maxsize=None)
def _find(name: str) -> str | None:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError) as e:
        return f"{name} not importable: {e}"
    return None if found else f"{name} not importable: no module named {name!r}"


missing_module.cache_clear = _find.cache_clear  # type: ignore[attr-defined]
