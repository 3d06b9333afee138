"""Cheap checks that a kernel library is present, without importing it."""

from __future__ import annotations

import importlib.util
from functools import lru_cache


@lru_cache(maxsize=None)
def missing_module(name: str) -> str | None:
    """None when ``name`` can be imported, else a reason such as
    ``"deep_gemm not importable: no module named 'deep_gemm'"``. Finds, never imports."""
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError) as e:
        return f"{name} not importable: {e}"
    return None if found else f"{name} not importable: no module named {name!r}"
