"""Device-side building blocks shared by runners: routing alignment, permute, combine.

Everything here runs without host synchronisation and with shapes fixed by the token
count alone, so a layer built from these pieces can be captured in a CUDA graph. Each
piece has a PyTorch path (any device; CPU tests) and Triton kernels (CUDA tensors, or
CPU tensors under ``TRITON_INTERPRET=1``, which the CPU tests use on tiny shapes).
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch


@cache
def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter is on (it must be set before triton is first imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def on_triton(t: torch.Tensor) -> bool:
    """Whether the Triton kernels take ``t``: on CUDA, or anywhere under the interpreter."""
    return has_triton() and (t.is_cuda or interpreting())


def pow2(n: int, least: int = 16) -> int:
    """The power of two >= ``max(n, least)`` (Triton block sizes)."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())
