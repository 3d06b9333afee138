"""Timing one loaded layer: a wall clock on the CPU (injectable, for tests), CUDA events on
the GPU (through a CUDA graph where the runner can be captured), warm-up, medians; and the
inputs a runner gets in its plan's token layout."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from ..sizes import round_up
from ..tokens import Layout

#: Masked buffers are padded to whole 128-row tiles (what DeepGEMM's SM90 kernels store).
MASKED_TILE = 128
#: Timed calls at least, whatever the time budget.
MIN_ITERS = 3


@dataclass(frozen=True)
class Timing:
    ms: float  # median per call
    samples: int
    timer: str  # wall_clock, cuda_events, cuda_graph
    #: Why no CUDA graph was used (empty when one was, or on the CPU).
    graph_note: str = ""


class WallClock:
    """CPU timing: ``clock()`` in seconds around each call; the median of ``iters`` calls
    after ``warmup`` untimed ones (fewer, but at least :data:`MIN_ITERS`, where ``iters``
    calls would take more than ``budget_s``)."""

    name = "wall_clock"

    def __init__(self, clock: Callable[[], float] | None = None, *, warmup: int = 2, iters: int = 7,
                 budget_s: float = 2.0):
        self.clock = clock or time.perf_counter
        self.warmup, self.iters, self.budget_s = warmup, max(1, iters), budget_s

    def count(self, estimate_s: float) -> int:
        """Timed calls for a call that takes about ``estimate_s``."""
        fit = int(self.budget_s / estimate_s) if estimate_s > 0 else self.iters
        return max(min(MIN_ITERS, self.iters), min(self.iters, fit))

    def sync(self) -> None:
        pass

    def elapsed(self, fn) -> float:
        """Seconds one call of ``fn`` takes (for load and first-call times)."""
        self.sync()
        t0 = self.clock()
        fn()
        self.sync()
        return self.clock() - t0

    def warmups(self, estimate_s: float) -> int:
        """Untimed calls: at most a quarter of the budget (at least one)."""
        fit = int(self.budget_s / 4 / estimate_s) if estimate_s > 0 else self.warmup
        return min(self.warmup, max(1, fit))

    def measure(self, fn, estimate_s: float = 0.0, *, capturable: bool = True) -> Timing:
        """Median of the calls (``capturable`` matters only to a timer that captures)."""
        for _ in range(self.warmups(estimate_s)):
            fn()
        samples = [self.elapsed(fn) * 1e3 for _ in range(self.count(estimate_s))]
        return Timing(statistics.median(samples), len(samples), self.name)


class CudaTimer(WallClock):
    """GPU timing: CUDA events around each replay of a CUDA graph of the call, or around
    each eager call where capturing fails (a runner that syncs or changes shapes)."""

    name = "cuda_events"

    def __init__(self, *, warmup: int = 3, iters: int = 20, graphs: bool = True, budget_s: float = 1.0):
        super().__init__(warmup=warmup, iters=iters, budget_s=budget_s)
        self.graphs = graphs

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize()

    def measure(self, fn, estimate_s: float = 0.0, *, capturable: bool = True) -> Timing:
        """``capturable``: the call may be captured (its plan is graph-safe); eager otherwise,
        as the layer would run."""
        import torch

        from ..graphs import capture

        run, name = fn, self.name
        note = "eager: the runner does not declare graph_safe" if not capturable else "graphs off"
        if self.graphs and capturable:
            try:
                run, name, note = capture(fn, warmups=self.warmups(estimate_s)).replay, "cuda_graph", ""
            except Exception as e:  # not graph-safe: time it eagerly
                self.sync()
                note = f"not captured ({type(e).__name__}: {str(e)[:120]})"
        for _ in range(self.warmups(estimate_s)):
            run()
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(self.count(estimate_s))]
        for start, end in pairs:
            start.record()
            run()
            end.record()
        self.sync()
        return Timing(statistics.median(s.elapsed_time(e) for s, e in pairs), len(pairs), name, note)


def workload(layer, tokens: int, *, seed: int = 0):
    """A zero-argument call of ``layer`` on ``tokens`` tokens per rank, in its plan's layout.

    Standard: ``tokens`` routed tokens. Contiguous and masked (a dispatcher's layouts): the
    rows this rank receives when every rank of the EP group routes ``tokens`` tokens; the
    masked buffer is cut to the largest count padded to whole 128-row tiles (capped at
    ``tokens x ep_size``, the dispatcher's full buffer): kernels skip rows past a count.
    """
    from ..runner import contiguous_layout, masked_layout
    from ..synthetic import random_inputs

    plan = layer.plan
    spec = plan.spec
    layout = plan.dispatch.layout
    if layout is Layout.STANDARD:
        x, tw, ti = random_inputs(spec, tokens, seed=seed)
        return lambda: layer(x, tw, ti)
    x, _, ti = random_inputs(spec, tokens * spec.ep_size, seed=seed)
    rows, offsets, _, _ = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    if layout is Layout.CONTIGUOUS:
        return lambda: layer.run_contiguous(rows, offsets)
    most = int(offsets.diff().max()) if offsets.numel() > 1 else 0
    masked, counts = masked_layout(rows, offsets, min(tokens * spec.ep_size,
                                                      round_up(max(most, 1), MASKED_TILE)))
    return lambda: layer.run_masked(masked, counts)
