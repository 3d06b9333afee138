"""What the GPU benchmarks share: timing loops, and the tuning a user runs once per machine
before the host's choice is timed. The ceilings they divide by are measured in the same run
(:mod:`ceilings`), never assumed."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

#: Bytes written before each timed GPU sample so no call finds the last one's data in L2
#: (the H200 has 50 MB of L2; a decode layer's weights can be smaller than that).
L2_FLUSH_BYTES = 256 * 2**20
#: Timed samples at least and at most, whatever the time budget.
MIN_SAMPLES, MAX_SAMPLES = 5, 50
_flush_buffer: torch.Tensor | None = None


@dataclass(frozen=True)
class Timed:
    """One callable's time."""

    ms: float  # median per call
    samples: int
    #: The samples replayed a CUDA graph of the call (False: eager calls).
    graphed: bool
    #: Why the call was not captured (None: it was, or capture was not tried).
    capture_error: str | None
    timer: str  # "cuda_graph", "cuda_events" or "wall_clock"
    first_s: float  # the first call, in seconds (JIT compiles land here)
    l2_flushed: bool = False
    #: What the last timed call returned (a replay's static output when graphed), so a
    #: caller checks the numbers of what was timed.
    output: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "output"}


def _flush_l2() -> None:
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    _flush_buffer.zero_()


def _samples_for(estimate_s: float, budget_s: float) -> int:
    fit = int(budget_s / estimate_s) if estimate_s > 0 else MAX_SAMPLES
    return max(MIN_SAMPLES, min(MAX_SAMPLES, fit))


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def time_call(fn: Callable[[], object], *, graph: bool = True, budget_s: float = 1.0,
              flush_l2: bool = True) -> Timed:
    """Median time of ``fn()`` (no arguments; its inputs are bound in).

    On CUDA: the first call is timed apart (compiles), then ``fn`` is captured in a CUDA
    graph (``moe_core.graphs.capture``; the inputs are the ones bound in, so the graph is
    valid for them) and each sample is CUDA events around one replay, after writing
    :data:`L2_FLUSH_BYTES` so weights are read from HBM. Where capture fails (a host
    sync, a shape that depends on data, ...) each sample is an eager call instead and the
    capture error is recorded in the result, never dropped. On the CPU: a wall clock.
    """
    if not torch.cuda.is_available():
        return _time_cpu(fn, budget_s)
    from moe_core.graphs import capture

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    last: list = [None]

    def keep() -> None:
        last[0] = fn()

    run, graphed, error = keep, False, None
    captured = None
    if graph:
        try:
            captured = capture(keep)
            run, graphed = captured.replay, True
        except Exception as e:  # noqa: BLE001 - not capturable: timed eagerly, the reason kept
            error = _why(e)
            captured = None
            try:
                torch.cuda.synchronize()
            except Exception as sync_error:  # noqa: BLE001 - a capture can leave an error behind
                error += f" (then on synchronize: {_why(sync_error)})"
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    run()  # one untimed run (a replay's first upload) and an estimate for the sample count
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    n = _samples_for(start.elapsed_time(end) / 1e3, budget_s)
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in pairs:
        if flush_l2:
            _flush_l2()
        s.record()
        run()
        e.record()
    torch.cuda.synchronize()
    ms = statistics.median(s.elapsed_time(e) for s, e in pairs)
    return Timed(ms, n, graphed, error, "cuda_graph" if graphed else "cuda_events", first, flush_l2,
                 output=last[0])


def _time_cpu(fn: Callable[[], object], budget_s: float) -> Timed:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    samples, out = [], None
    for _ in range(_samples_for(first, budget_s)):
        t0 = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timed(statistics.median(samples), len(samples), False, None, "wall_clock", first, output=out)


def timed(fn, iters=20):
    """``(ms per call, first call s)``: the first call includes any JIT compile. Eager calls
    back to back between two CUDA events (:func:`time_call` graphs and flushes L2)."""
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


def kernel_breakdown(fn: Callable[[], object], iters: int = 5, top: int = 12) -> list[dict]:
    """Where ``fn``'s time goes: ``fn()`` called eagerly ``iters`` times under torch.profiler,
    the ``top`` kernels (CPU ops off a GPU) by their own time, each as ``{"name", "us"
    (per call of fn), "launches" (per call of fn)}``, largest first, and ``"other"`` summing
    the rest. Kernel times do not depend on graph capture, so eager calls stand for replays
    (but L2 is not flushed between calls, as ``time_call`` does). On a CPU, "launches" counts
    aten op calls."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    fn()  # compiles and caches out of the profile
    if cuda:
        torch.cuda.synchronize()
    # acc_events: one profiling cycle, all of its events (and no warning that cycles clear them)
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU],
                 acc_events=True) as prof:
        for _ in range(iters):
            fn()
        if cuda:
            torch.cuda.synchronize()
    own = [(e.key, (e.self_device_time_total if cuda else e.self_cpu_time_total) / iters, e.count / iters)
           for e in prof.key_averages()]
    own = sorted((o for o in own if o[1] > 0), key=lambda o: -o[1])
    out = [dict(name=k, us=us, launches=n) for k, us, n in own[:top]]
    rest = sum(us for _, us, _ in own[top:])
    if rest:
        out.append(dict(name="other", us=rest, launches=sum(n for *_, n in own[top:])))
    return out


def tuned_host(jobs, *, registry=None, budget_s: float | None = None):
    """``moe tune`` on each ``(specs, buckets)`` of ``jobs`` into a throwaway cache (no earlier
    run's times count), as a user runs it once per machine. Returns ``(a host reading those
    measurements, the backends tuning chose, seconds)``; a tuning error propagates."""
    import tempfile

    from moe_core import Host
    from moe_core.tuning import TuningCache, tune

    cache = TuningCache(tempfile.mkdtemp(prefix="moe-bench-tune-"))
    t0 = time.perf_counter()
    chosen: set[str] = set()
    for specs, buckets in jobs:
        report = tune(specs, host=Host(registry), buckets=buckets, cache=cache, budget_s=budget_s)
        chosen |= {lay.chosen for lay in report.layers if lay.chosen}
    return Host(registry, measurements=cache), sorted(chosen), time.perf_counter() - t0


def parse_tiers(ap, text: str) -> tuple[int, ...]:
    """``--tiers`` (``"64,512"``): the plan boundaries, rising; ``ap.error`` on anything else."""
    try:
        tiers = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        tiers = (0,)
    if any(t < 1 for t in tiers):
        ap.error(f"--tiers {text!r}: expected a comma list of positive token counts")
    return tiers
