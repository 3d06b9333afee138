"""``moe tune``: time every runner that said yes for a layer over token buckets, record the
times in the tuning cache, and report the choice resolution will make from them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..plan import Selection
from ..spec import A2A, MoESpec
from ..tokens import Layout
from .cache import Objective, TuningCache, TuningError, environment_body, fingerprint, spec_key
from .timing import CudaTimer, WallClock, workload


def token_buckets(max_tokens: int) -> list[int]:
    """Powers of two up to ``max_tokens``, and ``max_tokens`` itself."""
    out, b = [], 1
    while b < max_tokens:
        out.append(b)
        b *= 2
    return out + [max_tokens]


def parse_buckets(text: str) -> list[int]:
    try:
        buckets = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        buckets = []
    if not buckets or buckets[0] < 1:
        raise TuningError(f"buckets {text!r}: expected comma-separated positive token counts, "
                          "e.g. 1,16,256,4096")
    return buckets


@dataclass
class Measured:
    """One runner at one bucket: its median time, or why it could not be timed."""

    backend: str
    layout: str
    wire: str
    ms: float | None = None
    samples: int = 0
    timer: str = ""
    note: str = ""
    #: process_weights + make_runner, and the first call (JIT compiles happen here).
    load_s: float = 0.0
    first_call_s: float = 0.0
    error: str | None = None

    def to_cache(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error, "layout": self.layout}
        return {"ms": self.ms, "layout": self.layout, "wire": self.wire, "samples": self.samples,
                "timer": self.timer, "load_s": self.load_s, "first_call_s": self.first_call_s}

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "layout": self.layout, "wire": self.wire, "ms": self.ms,
                "samples": self.samples, "timer": self.timer, "note": self.note,
                "load_s": self.load_s, "first_call_s": self.first_call_s, "error": self.error}


@dataclass
class LayerResult:
    spec: MoESpec
    key: str
    buckets: dict[int, list[Measured]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: What resolution now picks for ``spec`` from these times (None before recording).
    chosen: str | None = None
    selection: Selection | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "describe": self.spec.describe(), "spec_key": self.key,
                "buckets": {str(b): [m.to_dict() for m in ms] for b, ms in self.buckets.items()},
                "notes": self.notes, "chosen": self.chosen,
                "selection": self.selection.to_dict() if self.selection else None}


@dataclass
class TuneReport:
    fingerprint: str
    environment: dict[str, Any]
    cache_file: str
    objective: str
    layers: list[LayerResult]
    wall_s: float
    timer: str
    #: Making the random weights each layer is timed with (reported apart, like compiles).
    weights_s: float = 0.0

    @property
    def compile_s(self) -> float:
        """Load and first-call time of every runner: compiles, reported apart."""
        return sum(m.load_s + m.first_call_s for lay in self.layers
                   for ms in lay.buckets.values() for m in ms)

    @property
    def tuning_s(self) -> float:
        """Wall time less compiles and weight making: the timing itself."""
        return max(0.0, self.wall_s - self.compile_s - self.weights_s)

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "environment": self.environment,
                "cache_file": self.cache_file, "objective": self.objective, "timer": self.timer,
                "wall_s": self.wall_s, "compile_s": self.compile_s, "weights_s": self.weights_s,
                "tuning_s": self.tuning_s,
                "layers": [lay.to_dict() for lay in self.layers]}


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("tuning", total=total)

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def step(self, text: str, total: int | None = None) -> None:
        if self.bar:
            self.bar.update(self.task, description=text, total=total)

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)


def _time_one(host, plan, weights, tokens: int, timer: WallClock, seed: int) -> Measured:
    d = plan.dispatch
    m = Measured(str(plan.backend), d.layout.value, d.wire.value)
    if d.deliver_quantized:
        m.note = f"{d.wire} wire kept quantized: timed run_{d.layout.value} on {plan.spec.act_dtype} rows"
    layer = None
    try:
        box = []
        m.load_s = timer.elapsed(lambda: box.append(host.load(plan, weights, check_values=False)))
        layer = box[0]
        fn = workload(layer, tokens, seed=seed)
        m.first_call_s = timer.elapsed(fn)
        # Captured only where the layer itself may be (graph-safe, standard layout).
        t = timer.measure(fn, estimate_s=timer.elapsed(fn),
                          capturable=plan.graph_safe and d.layout is Layout.STANDARD)
        m.ms, m.samples, m.timer = t.ms, t.samples, t.timer
        m.note = "; ".join(n for n in (m.note, t.graph_note) if n)
    except Exception as e:  # recorded: resolution ranks a runner that failed here last
        m.error = _describe(e)
    finally:
        del layer
    return m


def tune(specs: MoESpec | Iterable[MoESpec], *, host=None, buckets: Iterable[int] | None = None,
         force: str | None = "", disable: Iterable[str] | str | None = (),
         cache: TuningCache | str | None = None, objective: Objective | str | None = None,
         clock: Callable[[], float] | None = None, warmup: int | None = None,
         iters: int | None = None, budget_s: float | None = None, graphs: bool = True,
         progress: bool = False,
         seed: int = 0) -> TuneReport:
    """Time every runner that says yes for each spec at each token bucket, record the medians
    in the tuning cache, and report what resolution now picks.

    Bucket ``T`` times the plan resolved for ``spec.for_tokens(T)`` on ``T`` tokens
    per rank (what an engine resolving that many tokens loads). Only the runner is timed;
    where tokens move (a2a), its input is built locally in the layout the dispatcher
    delivers.

    :param buckets: token counts (default: powers of two up to each spec's ``max_tokens``).
    :param force, disable: as in :meth:`Host.explain` (default: every runner, whatever
        ``$MOE_BACKEND``/``$MOE_DISABLE`` say).
    :param cache: a :class:`TuningCache` or its directory (default: the user cache).
    :param clock: seconds, for the CPU wall-clock timer (tests inject a fake one).
    :param iters, budget_s: timed calls per (runner, bucket), fewer (at least 3) where they
        would take longer than ``budget_s`` (default 1 s on CUDA, 2 s on the CPU).
    :param graphs: on CUDA, replay a CUDA graph of the call where it can be captured.
    """
    from .. import default_host
    from ..synthetic import random_weights
    from ..weights import device_type

    host = host or default_host()
    specs = [specs] if isinstance(specs, MoESpec) else list(dict.fromkeys(specs))
    specs.sort(key=lambda s: spec_key(s.replace(a2a=A2A.NONE)))  # same weights one after another
    if not specs:
        raise TuningError("nothing to tune: expected at least one spec")
    objective = objective if isinstance(objective, Objective) else Objective.parse(objective)
    cache = cache if isinstance(cache, TuningCache) else TuningCache(cache, objective)
    cache.ensure()  # before any timing: an unwritable cache should cost no tuning run
    plans = []
    for spec in specs:
        dev = device_type(spec)
        if dev == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise TuningError(f"arch {spec.arch} needs a CUDA device and none is present "
                                  "(expected --arch cpu or auto on this machine)")
        for b in (sorted(set(buckets)) if buckets else token_buckets(spec.max_tokens)):
            res = host.explain(spec.for_tokens(b), force=force, disable=disable)
            plans.append((spec, b, [c for c in res.candidates if c.supported]))
    cuda = any(device_type(s) == "cuda" for s in specs)
    if cuda and clock is None:
        timer: WallClock = CudaTimer(warmup=3 if warmup is None else warmup, iters=iters or 20,
                                     graphs=graphs, budget_s=budget_s or 1.0)
    else:
        timer = WallClock(clock, warmup=2 if warmup is None else warmup, iters=iters or 7,
                          budget_s=budget_s or 2.0)
    env = host.env.current()
    body = environment_body(env, host.registry)
    results = {s: LayerResult(s, spec_key(s)) for s in specs}
    t0 = time.perf_counter()
    weights: dict[MoESpec, Any] = {}
    weights_s = 0.0
    with _Progress(progress, sum(len(c) for _, _, c in plans)) as bar:
        for spec, b, cands in plans:
            lay = results[spec]
            same = spec.for_tokens(1).replace(a2a=A2A.NONE)  # the weights do not depend on these
            if same not in weights:
                weights.clear()  # one layer's weights at a time
                w0 = time.perf_counter()
                weights[same] = random_weights(spec, seed=seed)
                weights_s += time.perf_counter() - w0
            lay.buckets[b] = []
            for c in cands:
                bar.step(f"{spec.model or 'layer'} {b} tokens {c.backend}")
                plan = host.resolve(spec.for_tokens(b), force=str(c.backend), disable=())
                lay.buckets[b].append(_time_one(host, plan, weights[same], b, timer, seed))
                bar.advance()
            if not cands:
                lay.notes.append(f"{b} tokens: no runner said yes")
    weights.clear()
    wall = time.perf_counter() - t0
    entries = []
    for lay in results.values():
        if lay.spec.a2a is not A2A.NONE:
            lay.notes.append(f"runner only: with a2a {lay.spec.a2a} the dispatcher's dispatch and "
                             "combine between ranks are not timed in one process; runner inputs "
                             "were built locally in the layout the dispatcher delivers")
        for b, ms in lay.buckets.items():
            if ms:
                entries.append({"spec_key": lay.key, "bucket": b, "spec": lay.spec.describe(),
                                "timer": timer.name, "measured": time.time(),
                                "candidates": {m.backend: m.to_cache() for m in ms}})
    path = cache.record(body, entries)
    _decide(host, cache, results.values(), force, disable)
    return TuneReport(fingerprint(body), body, str(path), cache.objective.describe(),
                      list(results.values()), wall, timer.name, weights_s)


def _decide(host, cache: TuningCache, layers, force, disable) -> None:
    """What a fresh host reading the cache picks for each layer, and why."""
    from ..host import Host

    fresh = Host(host.registry, host.env, measurements=TuningCache(cache.path, cache.objective))
    for lay in layers:
        plan = fresh.explain(lay.spec, force=force, disable=disable).plan
        if plan is not None:
            lay.chosen, lay.selection = str(plan.backend), plan.selection


def pyplot():
    """matplotlib's pyplot (Agg backend), imported only for a plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TuningError("a plot needs matplotlib, which is not installed (expected "
                          "`pip install matplotlib`, or the tune extra of moe-core)") from None
    return plt


def plot(report: TuneReport, path: str) -> str:
    """One panel per layer: median ms per runner over the buckets (log-log); needs matplotlib."""
    plt = pyplot()
    n = len(report.layers)
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.4 * n), squeeze=False)
    for ax, lay in zip(axes[:, 0], report.layers):
        series: dict[str, list[tuple[int, float]]] = {}
        for b, ms in sorted(lay.buckets.items()):
            for m in ms:
                if m.ms is not None and math.isfinite(m.ms) and m.ms > 0:
                    series.setdefault(m.backend, []).append((b, m.ms))
        for backend, pts in sorted(series.items()):
            label = backend + (" (chosen)" if backend == lay.chosen else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    linewidth=2.5 if backend == lay.chosen else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per rank")
        ax.set_ylabel("median ms")
        ax.set_title(lay.spec.describe(), fontsize=7)
        if series:
            ax.legend(fontsize=7)
    fig.suptitle(f"moe tune, environment {report.fingerprint} ({report.timer})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
