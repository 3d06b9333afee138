"""What the GPU benchmarks share: the H100's measured peaks and one timing loop."""

from __future__ import annotations

import time

import torch

#: bf16 dense: torch._grouped_mm on large uniform groups (shared/GPU.md); HBM3 spec peak.
PEAK_TFLOPS, PEAK_GBS = 790.0, 3350.0


def timed(fn, iters=20):
    """``(ms per call, first call s)``: the first call includes any JIT compile."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters, first
