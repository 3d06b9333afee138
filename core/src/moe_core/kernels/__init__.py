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


def enable_interpreter() -> None:
    """Run Triton kernels in Triton's CPU interpreter in this process (tests). Call before
    any kernel is defined. Also works around Triton 3.6's interpreter reading a loop bound
    with ``int(<1-element array>)``, which numpy >= 2.4 refuses (``range(tl.cdiv(...))``)."""
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_scalar_index_shim", False):
        return

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch._scalar_index_shim = True
    interpreter._patch_lang_tensor = patch


def on_triton(t: torch.Tensor) -> bool:
    """Whether the Triton kernels take ``t``: on CUDA, or anywhere under the interpreter."""
    return has_triton() and (t.is_cuda or interpreting())


def pow2(n: int, least: int = 16) -> int:
    """The power of two >= ``max(n, least)`` (Triton block sizes)."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())
