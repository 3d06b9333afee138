"""The whole MoE layer, side by side: moe-core (the backend the host chooses, every other
eligible backend forced, its contiguous and masked layouts), the kernels its plugins wrap
called directly, vLLM's Triton fused-MoE kernel and transformers' experts implementations,
on the same shapes, the same weights and the same inputs.

Shapes are the bundled catalogue's (real sizes): DeepSeek-V3 under EP 8 (the 32 local
experts of one rank, every routed row landing on them), Qwen3-30B-A3B, gpt-oss-20b (biases,
clamped SwiGLU) and Nemotron-3-Nano at TP 8 (intermediate 232; the host pads it where a
backend needs). Each in bf16 and fp8_block128. Tokens 1 to 2,048 (routed rows = tokens x
top-k: 16K at top-8; ``--tokens`` for more), uniform random routing with a fixed seed,
random data.

Per row: ms (CUDA-graph replays where the call captures, else eager; which one is recorded,
with the capture error), the weight bytes of the experts the routing hits (counted once),
TB/s and the share of the measured HBM bandwidth (the faster of a read stream and a copy),
TFLOP/s and the share of the dtype's dense matmul rate (both ceilings measured in this run,
benchmarks/ceilings.py), the ratio to the fastest row of the same shape, dtype and tokens,
and the relative error of the first tokens against the float64 reference. A row that
cannot run says why.

    python benchmarks/layer_bench.py --out layer.json            # every shape (GPU)
    python benchmarks/layer_bench.py --shapes qwen3-30b-a3b --quants bf16 --tokens 1,64,4096
    python benchmarks/layer_bench.py --smoke --out /tmp/smoke.json   # CPU, reference only
    python benchmarks/layer_bench.py --from-json layer.json          # table and plot again
    python benchmarks/layer_bench.py --profile --contenders host,vLLM --tokens 16   # + each row's kernels

Writes the JSON to ``--out`` and the plot (ms per layer vs tokens, log-log, one panel per
shape x dtype) next to it as ``<out>.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ceilings as measured  # noqa: E402
import common  # noqa: E402
from common import L2_FLUSH_BYTES, time_call  # noqa: E402
from peers import PeerUnavailable  # noqa: E402

from moe_core import Host, MoESpec  # noqa: E402
from moe_core.models import find_model, spec_for_model  # noqa: E402
from moe_core.plan import Status  # noqa: E402
from moe_core.spec import DECODE_MAX_TOKENS, Quant  # noqa: E402
from moe_core.synthetic import weight_bytes  # noqa: E402
from moe_core.tokens import Layout  # noqa: E402

SCHEMA = "moe-core layer_bench 1"
#: 2,048 tokens at top-8 are the issue's 16K routed rows (DeepSeek-V3, Qwen3); 512 are 4K.
TOKENS = (1, 4, 16, 64, 128, 256, 512, 2048)
QUANTS = (Quant.BF16, Quant.FP8_BLOCK128)
#: Tokens whose output is compared with the float64 reference (it is slow by design).
CHECKED_TOKENS = 16
SEED = 0
#: Forced moe-core backends not timed by default on a GPU (named in their rows).
DEFAULT_SKIP = ("reference:loop",)
SMOKE_TOKENS = (1, 4, 16)


@dataclass(frozen=True)
class Shape:
    """One layer of a bundled model as a rank runs it."""

    model: str
    tp: int = 1
    #: Expert parallelism: the rank's ``num_experts / ep`` experts, with every routed row
    #: landing on them (what a rank receives after the dispatch).
    ep: int = 1
    #: ``(experts, top_k, hidden, intermediate)`` replacing the model's (``--smoke``).
    tiny: tuple[int, int, int, int] | None = None

    def spec(self, quant: Quant, arch: str, max_tokens: int) -> MoESpec:
        cfg = find_model(self.model)
        spec = spec_for_model(cfg, tp=self.tp, quant=quant, arch=arch, max_tokens=max_tokens,
                              experts=cfg.num_experts // self.ep if self.ep > 1 else None)
        if self.tiny:
            e, k, h, i = self.tiny
            spec = spec.replace(num_experts=e, top_k=k, hidden_size=h, intermediate_size=i * self.tp)
        return spec

    @property
    def model_type(self) -> str:
        return find_model(self.model).model_type


SHAPES = {
    "deepseek-v3-ep8": Shape("deepseek-ai/DeepSeek-V3", ep=8),
    "qwen3-30b-a3b": Shape("Qwen/Qwen3-30B-A3B"),
    "gpt-oss-20b": Shape("openai/gpt-oss-20b"),
    "nemotron-3-nano-tp8": Shape("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", tp=8),
}
SMOKE_SHAPES = {"tiny-qwen3": Shape("Qwen/Qwen3-30B-A3B", tiny=(8, 2, 128, 64))}


class Kind(StrEnum):
    """What a row measures."""

    HOST = "moe-core host"  # the backend the host resolves for the tokens' regime
    FORCED = "moe-core forced"  # every other backend, forced
    LAYOUT = "moe-core layout"  # run_contiguous / run_masked on inputs already in that layout
    KERNEL = "kernel direct"  # a plugin's kernel, called without moe-core
    PEER = "peer"  # another project's implementation


@dataclass
class Row:
    shape: str
    quant: str
    tokens: int
    routed_rows: int
    contender: str
    kind: Kind
    backend: str | None = None
    #: Why the row did not run (None: it ran).
    reason: str | None = None
    ms: float | None = None
    graphed: bool | None = None
    capture_error: str | None = None
    timer: str | None = None
    first_s: float | None = None
    weight_bytes: int | None = None
    tbps: float | None = None
    pct_hbm: float | None = None
    tflops: float | None = None
    pct_matmul: float | None = None
    ratio_to_fastest: float | None = None
    rel_err: float | None = None
    tolerance: float | None = None
    note: str | None = None
    #: ``--profile``: the kernels the call launches and their time per call
    #: (``common.kernel_breakdown``), largest first.
    kernels: list[dict] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        return cls(**{**d, "kind": Kind(d["kind"])})


# -- the arithmetic (one place) ------------------------------------------------------------
def touched_weight_bytes(spec: MoESpec, topk_ids: torch.Tensor) -> int:
    """Bytes of the canonical weights of the local experts ``topk_ids`` routes to, each
    expert counted once however many rows it gets (padding a backend adds is not counted)."""
    local = topk_ids.reshape(-1) - spec.first_expert
    hit = torch.unique(local[(local >= 0) & (local < spec.local_experts)]).numel()
    return weight_bytes(spec) * hit // spec.local_experts


def routed_rows(spec: MoESpec, topk_ids: torch.Tensor) -> int:
    local = topk_ids.reshape(-1) - spec.first_expert
    return int(((local >= 0) & (local < spec.local_experts)).sum())


def layer_flops(spec: MoESpec, rows: int) -> int:
    """Useful FLOPs of the two GEMMs over ``rows`` routed rows (the unpadded intermediate)."""
    return 2 * rows * spec.hidden_size * (spec.w13_rows + spec.intermediate_per_partition)


def fill_rates(row: Row, flops: int, ceil: measured.Ceilings) -> None:
    """TB/s, TFLOP/s and their shares of the measured ceilings, from ``row.ms``."""
    seconds = row.ms * 1e-3
    row.tbps = row.weight_bytes / seconds / 1e12
    row.tflops = flops / seconds / 1e12
    row.pct_hbm = measured.fraction(row.tbps, ceil.hbm_tbps)
    row.pct_matmul = measured.fraction(row.tflops, ceil.matmul_tflops(row.quant))


def fill_ratios(rows: list[Row]) -> None:
    """Each timed row's time over the fastest timed row of its (shape, quant, tokens)."""
    fastest: dict[tuple, float] = {}
    for r in rows:
        if r.ms is not None:
            key = (r.shape, r.quant, r.tokens)
            fastest[key] = min(fastest.get(key, r.ms), r.ms)
    for r in rows:
        r.ratio_to_fastest = None if r.ms is None else r.ms / fastest[(r.shape, r.quant, r.tokens)]


# -- inputs ---------------------------------------------------------------------------------
def routed_inputs(spec: MoESpec, tokens: int, device: str, seed: int = SEED):
    """``(x [T, H], topk_weights [T, k] fp32, topk_ids [T, k] int64)``: k distinct experts per
    token drawn uniformly over the local experts, softmax weights, N(0, 1) tokens. Seeded
    the same for every token count, so a smaller batch is the start of a larger one."""
    def gen(i):  # one stream per tensor: rows are drawn in order, so prefixes agree
        return torch.Generator().manual_seed(seed * 3 + i)

    E = spec.local_experts
    x = torch.randn(tokens, spec.hidden_size, generator=gen(0)).to(torch.bfloat16)
    ids = torch.rand(tokens, E, generator=gen(1)).argsort(dim=1)[:, :spec.top_k] + spec.first_expert
    w = torch.softmax(torch.randn(tokens, spec.top_k, generator=gen(2)), dim=-1)
    return x.to(device), w.to(device), ids.to(device)


@dataclass
class Call:
    """A timed call on inputs bound in, and how its output becomes ``[T, H]`` (checked)."""

    fn: Callable[[], torch.Tensor]
    to_tokens: Callable[[torch.Tensor], torch.Tensor] = lambda out: out
    note: str | None = None
    #: Time it as it is (it replays its own graphs) rather than capturing it.
    own_graph: bool = False
    #: Why it is timed eagerly without trying a capture (None: try one).
    no_capture: str | None = None
    #: The same call without its own graph (``--profile`` runs it eagerly); None: ``fn``.
    eager: Callable[[], torch.Tensor] | None = None


@dataclass
class Contender:
    name: str
    kind: Kind
    backend: str | None
    #: ``make(x, topk_weights, topk_ids) -> Call`` (raises PeerUnavailable or anything: the reason)
    make: Callable[..., Call] | None = None
    reason: str | None = None
    #: Token counts it applies to (None: all).
    tokens: tuple[int, ...] | None = None


# -- moe-core rows --------------------------------------------------------------------------
def layer_call(layer, x, tw, ti) -> Call:
    """The standard call of a loaded layer as an engine runs it: ``MoELayer.graphed()``
    (captured for this token count) where the plan is graph-safe, replayed on its static
    inputs with the inputs written there beforehand, as an engine's router writes them (the
    peers' graphs read their bound inputs in place too); else eager with moe-core's reason
    (no generic capture of a moe-core layer)."""
    from moe_core.errors import GraphError

    try:
        g = layer.graphed([x.shape[0]], copy_out=False)
    except GraphError as e:
        return Call(lambda: layer(x, tw, ti), no_capture=str(e))
    sx, sw, si = g.static_inputs(x.shape[0])
    sx.copy_(x), sw.copy_(tw), si.copy_(ti)
    return Call(lambda: g(sx, sw, si), note="MoELayer.graphed(), inputs in its static buffers",
                own_graph=True, eager=lambda: layer(x, tw, ti))


def layout_call(layer, layout: Layout, x, tw, ti) -> Call:
    """``run_contiguous`` / ``run_masked`` on inputs built beforehand from the same routing."""
    from moe_core.runner import combine, contiguous_layout, masked_layout, valid_rows
    from moe_core.sizes import round_up

    spec = layer.plan.spec
    rows, offsets, tokens, pairs = contiguous_layout(x, ti, spec.first_expert, spec.local_experts)
    T = x.shape[0]

    def back(y):
        return combine(y, tokens, pairs, tw, T)

    # A failed capture of a call that syncs can leave the CUDA context faulting (seen on the
    # H200, 2026-12-01: reference:grouped_mm's run_masked, then an illegal access two rows
    # later), so only a graph-safe plan's calls are captured, as moe tune does.
    no_capture = None if layer.plan.graph_safe else "the runner does not declare graph_safe"
    if layout is Layout.CONTIGUOUS:
        return Call(lambda: layer.run_contiguous(rows, offsets), back, no_capture=no_capture)
    counts = offsets.diff()
    M = round_up(max(int(counts.max()), 1), 128)  # whole 128-row tiles (DeepGEMM's masked store)
    masked, counts = masked_layout(rows, offsets, M)
    return Call(lambda: layer.run_masked(masked, counts), lambda y: back(y[valid_rows(counts, M)]),
                note=f"{M} rows per expert buffer", no_capture=no_capture)


def _variant(host: Host, plugin: str, variant: str):
    rec = host.registry.records.get(plugin)
    return next((v for v in (rec.runner_variants if rec else ()) if v.name == variant), None)


def moe_core_contenders(host: Host, spec: MoESpec, weights, tokens: tuple[int, ...],
                        skip: tuple[str, ...], layers: dict) -> list[Contender]:
    """Host-chosen, forced and layout rows for the token counts of one regime."""
    res = host.explain(spec, force="", disable=())
    out: list[Contender] = []

    def load(plan):
        key = (str(plan.backend), plan.intermediate_padded, plan.spec.max_tokens)
        if key not in layers:
            layers[key] = host.load(plan, weights, check_values=False)
        return layers[key]

    def loaded(plan):
        def make(x, tw, ti):
            return layer_call(load(plan), x, tw, ti)
        return make

    if res.plan is None:
        out.append(Contender("moe-core (host)", Kind.HOST, None, reason="no backend: " + res.summary(),
                             tokens=tokens))
    else:
        picked = res.plan.selection

        def host_row(x, tw, ti, plan=res.plan):
            call = loaded(plan)(x, tw, ti)
            how = f"chosen by {picked.by.value}" if picked else "chosen by priority"
            call.note = "; ".join(n for n in (how, call.note) if n)
            return call
        out.append(Contender("moe-core (host)", Kind.HOST, str(res.plan.backend), host_row,
                             tokens=tokens))
    for cand in res.candidates:
        name = str(cand.backend)
        if res.plan is not None and cand.backend == res.plan.backend:
            plan = res.plan
        elif cand.status is Status.SUPPORTED and name not in skip:
            plan = host.resolve(spec, force=name, disable=())
            out.append(Contender(f"moe-core {name}", Kind.FORCED, name, loaded(plan), tokens=tokens))
        else:
            why = (f"skipped (--skip {name})" if name in skip else
                   f"{cand.status.value}: {cand.code.value + ': ' if cand.code else ''}{cand.reason}")
            out.append(Contender(f"moe-core {name}", Kind.FORCED, name, reason=why, tokens=tokens))
            continue
        variant = _variant(host, cand.plugin, cand.variant)
        for layout in (Layout.CONTIGUOUS, Layout.MASKED):
            label = f"moe-core {name} [{layout.value}]"
            if variant is None or layout not in variant.layouts:
                continue
            if name in skip:
                out.append(Contender(label, Kind.LAYOUT, name, reason=f"skipped (--skip {name})", tokens=tokens))
                continue

            def make(x, tw, ti, plan=plan, layout=layout):
                return layout_call(load(plan), layout, x, tw, ti)
            out.append(Contender(label, Kind.LAYOUT, name, make, tokens=tokens))
    return out


# -- kernels called directly, and peers -----------------------------------------------------
def _supported(res, prefix: str):
    """The supported candidates whose backend name starts with ``prefix``, and every reason."""
    ok = [c for c in res.candidates if str(c.backend).startswith(prefix) and c.supported]
    why = "; ".join(f"{c.backend}: {c.reason}" for c in res.candidates if str(c.backend).startswith(prefix))
    return ok, why or f"no {prefix} plugin installed"


def direct_contenders(host: Host, spec: MoESpec, weights) -> list[Contender]:
    """DeepGEMM's grouped GEMMs (contiguous, masked) and FlashInfer's fused MoE, called
    directly where the plugin says the kernel can run the shape (else its reasons)."""
    from peers.direct import DeepGemmDirect, FlashInferDirect

    res = host.explain(spec, force="", disable=())
    out = []
    for layout in ("contiguous", "masked"):
        name = f"DeepGEMM direct [{layout}]"
        ok, why = _supported(res, f"deepgemm:{layout}")
        if not ok:
            out.append(Contender(name, Kind.KERNEL, None, reason=why))
            continue
        fused = any(c.variant.endswith("_fused") for c in ok)
        backend = f"deepgemm:{layout}{'_fused' if fused else ''}"
        kernel: dict = {}

        def make(x, tw, ti, layout=layout, fused=fused, kernel=kernel):
            if "k" not in kernel:
                kernel["k"] = DeepGemmDirect(spec, weights, fused=fused)
            p = getattr(kernel["k"], layout)(x, tw, ti)
            return Call(p.call, p.to_tokens, p.note)
        out.append(Contender(name, Kind.KERNEL, backend, make))
    ok, why = _supported(res, "flashinfer_cutlass:")
    if not ok:
        out.append(Contender("FlashInfer CUTLASS direct", Kind.KERNEL, None, reason=why))
    else:
        plan = host.resolve(spec, force=str(ok[0].backend), disable=())
        state: dict = {}

        def make(x, tw, ti):
            if "k" not in state:
                state["k"] = FlashInferDirect(plan, host.process_weights(plan, weights))
            p = state["k"].standard(x, tw, ti)
            return Call(p.call, p.to_tokens, f"I padded to {plan.intermediate_padded}" if plan.padded else None)
        out.append(Contender("FlashInfer CUTLASS direct", Kind.KERNEL, str(plan.backend), make))
    return out


def vllm_contender(spec: MoESpec, weights, vllm_root: str | None) -> Contender:
    from peers import vllm_triton

    name = "vLLM Triton (fused_moe_kernel)"
    if not weights.w13.is_cuda:
        return Contender(name, Kind.PEER, None, reason="needs a CUDA device (Triton kernel; the CPU "
                         "interpreter runs it in tests/test_vllm_peer.py)")
    try:
        peer = vllm_triton.VllmTritonMoE(spec, weights, vllm_triton.VllmSource.find(vllm_root))
    except PeerUnavailable as e:
        return Contender(name, Kind.PEER, None, reason=str(e))

    def make(x, tw, ti):
        return Call(lambda: peer(x, tw, ti), note=peer.describe(x.shape[0]))
    return Contender(name, Kind.PEER, peer.source.version, make)


def transformers_contenders(shape: Shape, spec: MoESpec, weights) -> list[Contender]:
    from peers import transformers_experts as tf

    try:
        here = tf.implementations_here()
    except Exception as e:  # noqa: BLE001 - transformers broken here: every row says so
        here = {impl: f"{type(e).__name__}: {e}" for impl in tf.IMPLEMENTATIONS}
    module: dict = {}
    out = []
    for impl, missing in here.items():
        name = f"transformers {impl}"
        if missing:
            out.append(Contender(name, Kind.PEER, None, reason=missing))
            continue

        def make(x, tw, ti, impl=impl):
            import transformers_bench

            limit = transformers_bench.why_not(impl, x.shape[0], dict(
                top_k=spec.top_k, hidden=spec.hidden_size, intermediate=spec.intermediate_per_partition))
            if limit:
                raise PeerUnavailable(limit)
            if "m" not in module:
                module["m"] = tf.build_module(shape.model_type, spec, weights)
            call = tf.experts_call(impl, module["m"])
            return Call(lambda: call(x, tw, ti))
        if spec.quant is not Quant.BF16:
            out.append(Contender(name, Kind.PEER, None, reason=f"transformers' experts implementations "
                                 f"run bf16 weights; the layer is {spec.quant.value}"))
        else:
            out.append(Contender(name, Kind.PEER, shape.model_type, make))
    return out


# -- running --------------------------------------------------------------------------------
def _why(e: BaseException) -> str:
    return e.args[0] if isinstance(e, PeerUnavailable) and e.args else \
        f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def measure_row(c: Contender, row: Row, x, tw, ti, flops: int, want, ceil, budget_s: float,
                profile: bool = False) -> None:
    """Time ``c`` on the inputs and fill ``row`` (its reason where it cannot run); with
    ``profile``, also the kernels of one call (``row.kernels``)."""
    from moe_core.reference.oracle import relative_error

    try:
        call = c.make(x, tw, ti)
        t = time_call(call.fn, graph=not (call.own_graph or call.no_capture), budget_s=budget_s)
        got = call.to_tokens(t.output)[:want.shape[0]]  # the numbers of what was timed
    except Exception as e:  # noqa: BLE001 - the row says why it did not run
        row.reason = _why(e)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return
    row.ms, row.graphed, row.capture_error, row.timer, row.first_s = (
        t.ms, t.graphed or call.own_graph, t.capture_error or call.no_capture, t.timer, t.first_s)
    row.note = "; ".join(n for n in (row.note, call.note) if n) or None
    row.rel_err = relative_error(got, want)
    fill_rates(row, flops, ceil)
    if profile:  # apart from the timing: a profiler failure leaves the timed row standing
        try:
            row.kernels = common.kernel_breakdown(call.eager or call.fn)
        except Exception as e:  # noqa: BLE001 - the note says why there is no profile
            row.note = "; ".join(n for n in (row.note, f"no profile: {_why(e)}") if n)


def tier_plans(spec: MoESpec, tokens: tuple[int, ...], tiers: tuple[int, ...]):
    """``[(spec, its token counts)]``: one plan per token range, as the transformers
    integration's ``tiers`` makes them (boundaries ``tiers`` and the decode limit; the last
    plan, prefill, up to the largest count)."""
    top = max(tokens)
    bounds = sorted({*(t for t in tiers if t < top), DECODE_MAX_TOKENS})
    out, low = [], 0
    for high in [*bounds, top] if top > bounds[-1] else bounds:
        ts = tuple(t for t in tokens if low < t <= high)
        if ts:
            out.append((spec.replace(max_tokens=high, min_tokens=low), ts))
        low = high
    return out


def tuned_host(host: Host, plans: dict, regimes: dict, log) -> Host:
    """A host whose runner order comes from ``moe tune`` on this panel's layers (in a
    throwaway cache, so no earlier run's times count); ``host`` where tuning fails."""
    try:
        tuned, _, seconds = common.tuned_host([(s, regimes[regime]) for regime, s in plans.items()],
                                              registry=host.registry, budget_s=0.3)
    except Exception as e:  # noqa: BLE001 - the host row says it is the static order
        log(f"  moe tune failed ({type(e).__name__}: {e}); the host row uses the static order")
        return host
    log(f"  moe tune: {seconds:.1f} s")
    return tuned


def run_panel(name: str, shape: Shape, quant: Quant, tokens: tuple[int, ...], args, host: Host,
              ceil: measured.Ceilings, device: str, arch: str, log) -> list[Row]:
    """Every contender of one (shape, quant) at every token count."""
    from moe_core.quant import tolerance
    from moe_core.reference.oracle import float64_layer
    from moe_core.synthetic import random_weights

    top = max(tokens)
    spec = shape.spec(quant, arch, top)
    log(f"{name} {quant.value}: {spec.describe()}")
    weights = random_weights(spec, seed=SEED, device=device)
    x_all, tw_all, ti_all = routed_inputs(spec, top, device)
    n = min(CHECKED_TOKENS, top)
    want = float64_layer(spec, weights, x_all[:n], tw_all[:n], ti_all[:n])
    regimes = {"decode": tuple(t for t in tokens if t <= DECODE_MAX_TOKENS),
               "prefill": tuple(t for t in tokens if t > DECODE_MAX_TOKENS)}
    contenders: list[Contender] = []
    layers: dict = {}
    smoke = args.smoke
    tuned = {regime: spec.replace(max_tokens=DECODE_MAX_TOKENS if regime == "decode" else top)
             for regime, ts in regimes.items() if ts}
    if args.tune:  # what a user runs once per machine: the host then chooses by measurement
        host = tuned_host(host, tuned, regimes, log)
    for s, ts in tier_plans(spec, tokens, args.tiers):  # the measurements serve every tier
        contenders += moe_core_contenders(host, s, weights, ts, args.skip, layers)
    if smoke:
        why = "--smoke runs the reference backend and CPU peers only"
        contenders += [Contender(c, Kind.KERNEL if "direct" in c else Kind.PEER, None, reason=why)
                       for c in ("DeepGEMM direct [contiguous]", "DeepGEMM direct [masked]",
                                 "FlashInfer CUTLASS direct", "vLLM Triton (fused_moe_kernel)")]
    else:
        contenders += direct_contenders(host, spec, weights)
        contenders.append(vllm_contender(spec, weights, args.vllm_root))
    contenders += transformers_contenders(shape, spec, weights)
    wanted = [c for c in contenders if not args.contenders or any(p in c.name for p in args.contenders)]
    rows = []
    for T in tokens:
        x, tw, ti = x_all[:T], tw_all[:T], ti_all[:T]
        rr = routed_rows(spec, ti)
        wbytes = touched_weight_bytes(spec, ti)
        flops = layer_flops(spec, rr)
        for c in wanted:
            if c.tokens is not None and T not in c.tokens:
                continue
            row = Row(name, quant.value, T, rr, c.name, c.kind, c.backend, reason=c.reason,
                      weight_bytes=wbytes, tolerance=tolerance(quant))
            if c.reason is None:
                measure_row(c, row, x, tw, ti, flops, want[:min(n, T)], ceil, args.budget, args.profile)
            log(_line(row))
            for k in row.kernels or ():
                log(f"      {k['us']:9.2f} us x{k['launches']:g}  {k['name'][:110]}")
            rows.append(row)
    del layers, weights
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


# -- reporting ------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _line(r: Row) -> str:
    if r.ms is None:
        return f"  T={r.tokens:>5} {r.contender}: not run: {r.reason}"
    return (f"  T={r.tokens:>5} {r.contender}: {r.ms:.4f} ms {'graph' if r.graphed else 'eager'} "
            f"{r.tbps:.3g} TB/s ({_pct(r.pct_hbm)}) {r.tflops:.3g} TFLOP/s ({_pct(r.pct_matmul)}) "
            f"err {r.rel_err:.1e}")


def print_tables(rows: list[Row], ceil: dict, env: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    print(f"{env.get('device')}: {measured.describe(measured.Ceilings.from_dict(ceil))}")
    panels = dict.fromkeys((r.shape, r.quant) for r in rows)
    cols = ("tokens", "rows", "contender", "backend", "ms", "graph", "TB/s", "% HBM", "TFLOP/s",
            "% matmul", "x fastest", "rel err", "note")
    for shape, quant in panels:
        timed = sorted((r for r in rows if (r.shape, r.quant) == (shape, quant) and r.ms is not None),
                       key=lambda r: (r.tokens, r.ms))
        cells = [(str(r.tokens), str(r.routed_rows), r.contender, r.backend or "", f"{r.ms:.4f}",
                  "yes" if r.graphed else "no", f"{r.tbps:.3g}", _pct(r.pct_hbm), f"{r.tflops:.3g}",
                  _pct(r.pct_matmul), f"{r.ratio_to_fastest:.2f}",
                  f"{r.rel_err:.1e}" + ("!" if r.tolerance and r.rel_err > r.tolerance else ""),
                  "; ".join(x for x in (r.note, r.capture_error and f"eager: {r.capture_error[:80]}") if x))
                 for r in timed]
        title = f"{shape} {quant}: time per layer (rel err ! = above the {quant} tolerance)"
        if Console is not None:
            from rich.text import Text  # plain text: "[masked]" is not markup

            table = Table(title=title)
            for col in cols:
                table.add_column(col, overflow="fold")
            for c in cells:
                table.add_row(*map(Text, c))
            Console(width=220).print(table)
        else:
            print(title)
            print(" | ".join(cols))
            for c in cells:
                print(" | ".join(c))
        skipped: dict[tuple[str, str], list[int]] = {}
        for r in rows:
            if (r.shape, r.quant) == (shape, quant) and r.ms is None:
                skipped.setdefault((r.contender, r.reason), []).append(r.tokens)
        if skipped:
            print(f"{shape} {quant}: not run")
            for (contender, reason), ts in skipped.items():
                print(f"  {contender} (tokens {','.join(map(str, ts))}): {reason}")


def plot(rows: list[Row], path: str, title: str) -> str:
    """One panel per shape x dtype: ms per layer vs tokens, log-log, a line per contender."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (run --from-json where it is)"
    panels = list(dict.fromkeys((r.shape, r.quant) for r in rows))
    cols = min(2, len(panels)) or 1
    nrows = -(-len(panels) // cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(7.5 * cols, 5 * nrows), squeeze=False)
    for ax, (shape, quant) in zip(axes.flat, panels):
        series: dict[str, list] = {}
        for r in rows:
            if (r.shape, r.quant) == (shape, quant) and r.ms is not None:
                series.setdefault(r.contender, []).append((r.tokens, r.ms))
        for label, pts in sorted(series.items()):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", markersize=3, label=label,
                    linewidth=2.4 if label == "moe-core (host)" else 1.1)
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="ms per layer", title=f"{shape} {quant}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def plot_path(out: str) -> str:
    return str(Path(out).with_suffix(".png"))


def environment(args, device: str) -> dict:
    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, triton=version("triton"), transformers=version("transformers"),
                python=platform.python_version(), smoke=args.smoke, command=" ".join(sys.argv),
                timing=("median of samples of one call each: CUDA events around a CUDA-graph replay "
                        "(or an eager call where capture failed), after writing "
                        f"{L2_FLUSH_BYTES >> 20} MiB so no sample finds weights in L2"
                        if device == "cuda" else "median of wall-clock samples of one call each"),
                budget_s=args.budget, skip=list(args.skip), seed=SEED, checked_tokens=CHECKED_TOKENS)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: all)")
    ap.add_argument("--quants", default=",".join(q.value for q in QUANTS))
    ap.add_argument("--tokens", default=None, help=f"comma list (default {','.join(map(str, TOKENS))})")
    ap.add_argument("--contenders", default=None,
                    help="comma list of substrings: only rows whose name contains one (e.g. 'host,vLLM')")
    ap.add_argument("--skip", default=None,
                    help=f"forced moe-core backends not to time (default on a GPU: {','.join(DEFAULT_SKIP)})")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed samples per row "
                    "(default 0.25; 0.02 with --smoke)")
    ap.add_argument("--vllm-root", default=None, help="where scripts/fetch_vllm.sh extracted vLLM "
                    "(default .carry/vllm)")
    ap.add_argument("--out", default=None, help="JSON of every row and the ceilings; the plot goes to <out>.png")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU: one tiny shape, a few token counts, the reference backend and CPU peers, "
                         "a CPU copy as the only ceiling")
    ap.add_argument("--from-json", default=None, help="print and plot an earlier run (no GPU needed)")
    ap.add_argument("--profile", action="store_true",
                    help="also record each timed row's kernels and their time per call (torch.profiler, "
                         "eager calls; pair with --contenders)")
    ap.add_argument("--tiers", default="", help="comma list of plan boundaries besides the decode "
                    "limit (e.g. 64,512: host rows of 1-64, 65-256, 257-512 and more tokens, each from "
                    "a plan of its own range, as transformers' configure(tiers=...) makes them)")
    ap.add_argument("--no-tune", dest="tune", action="store_false",
                    help="skip `moe tune` before each panel: the host row then shows the static "
                         "priority order instead of the measured choice a tuned machine makes")
    a = ap.parse_args(argv)
    default_tokens = SMOKE_TOKENS if a.smoke else TOKENS
    a.tokens = tuple(sorted({int(t) for t in a.tokens.split(",") if t})) if a.tokens else default_tokens
    if any(t < 1 for t in a.tokens):
        ap.error(f"--tokens must be positive integers; got {a.tokens}")
    shapes = SMOKE_SHAPES if a.smoke else SHAPES
    a.shapes = a.shapes.split(",") if a.shapes else list(shapes)
    unknown = [s for s in a.shapes if s not in shapes]
    if unknown:
        ap.error(f"unknown shape(s) {unknown}; expected some of {', '.join(shapes)}")
    try:
        a.quants = [Quant(q) for q in a.quants.split(",")]
    except ValueError:
        ap.error(f"--quants {a.quants!r}: expected some of {', '.join(q.value for q in QUANTS)}")
    a.tiers = common.parse_tiers(ap, a.tiers)
    a.contenders = [c for c in (a.contenders or "").split(",") if c]
    a.skip = tuple(a.skip.split(",")) if a.skip is not None else (() if a.smoke else DEFAULT_SKIP)
    a.budget = a.budget if a.budget is not None else (0.02 if a.smoke else 0.25)
    return a, shapes


def main(argv=None) -> dict:
    args, shapes = parse(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        rows = [Row.from_dict(r) for r in data["rows"]]
        print_tables(rows, data["ceilings"], data["env"])
        out = args.out or args.from_json
        print(plot(rows, plot_path(out), f"MoE layer on {data['env']['device']}"))
        return data
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (the device machine: scripts/gpu_session.sh), or --smoke on a CPU")
    arch = "cpu" if args.smoke else "auto"
    ceil = measured.measure(device)
    print(measured.describe(ceil), flush=True)
    host = Host()
    rows: list[Row] = []
    for name in args.shapes:
        for quant in args.quants:
            rows += run_panel(name, shapes[name], quant, args.tokens, args, host, ceil, device, arch,
                              lambda s: print(s, flush=True))
    fill_ratios(rows)
    env = environment(args, device)
    data = dict(schema=SCHEMA, env=env, ceilings=ceil.to_dict(), rows=[r.to_dict() for r in rows])
    print_tables(rows, data["ceilings"], env)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(data, indent=1))
        print(f"json: {args.out}")
        print(plot(rows, plot_path(args.out), f"MoE layer on {env['device']}"))
    return data


if __name__ == "__main__":
    main()
