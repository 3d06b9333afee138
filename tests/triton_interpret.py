"""Triton's CPU interpreter for tests: ``enable()`` before triton is imported.

Triton 3.6's interpreter converts a scalar to an index with ``int(array)``, which numpy >= 2.4
refuses for its 1-element arrays (``range(tl.cdiv(K, BLOCK_K))`` in a kernel fails); the shim
takes the element instead. Only the interpreter is patched, only in the process that asks.
"""

from __future__ import annotations

import os


def enable() -> None:
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
