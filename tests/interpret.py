"""Run ``moe_core.kernels``' Triton kernels on CPU tensors under Triton's interpreter.

``TRITON_INTERPRET=1`` takes effect only if set before triton is first imported, so the
kernels run in a process of their own: :func:`run_interpreted` saves the calls, runs this
file as a script, and loads what each call returned.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

#: What a call may name: ``(module, function)`` in moe_core.kernels.
CALLS = {
    "align_by_expert": ("align", "align_by_expert"),
    "align_masked": ("align", "align_masked"),
    "permute_contiguous": ("permute", "permute_contiguous"),
    "permute_masked": ("permute", "permute_masked"),
    "unpermute": ("permute", "unpermute"),
}


def run_interpreted(calls: list[tuple[str, tuple, dict]]) -> list:
    """``[(name, args, kwargs)]`` -> each call's result, computed by the Triton kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "calls.pt"), Path(tmp, "results.pt")
        torch.save(calls, src)
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        done = subprocess.run([sys.executable, __file__, str(src), str(dst)], env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"interpreter worker failed:\n{done.stderr[-4000:]}")
        return torch.load(dst, weights_only=False)


def _main(src: str, dst: str) -> None:
    import importlib

    import moe_core.kernels as kernels

    if not kernels.on_triton(torch.zeros(1)):
        raise SystemExit("the kernels would not take CPU tensors: TRITON_INTERPRET or triton missing")
    results = []
    for name, args, kwargs in torch.load(src, weights_only=False):
        module, fn = CALLS[name]
        results.append(getattr(importlib.import_module(f"moe_core.kernels.{module}"), fn)(*args, **kwargs))
    torch.save(results, dst)


if __name__ == "__main__":
    _main(*sys.argv[1:])
