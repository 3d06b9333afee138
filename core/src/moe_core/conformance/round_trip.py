"""Dispatcher round trips on a real two-process gloo group (``torch.multiprocessing`` spawn).

One spawn runs every case in sequence: starting two Python processes that import torch
costs seconds, a case milliseconds. Each child builds its host the way the kit's did (the
``--moe-conformance-host`` factory, or the installed plugins), pins the case's dispatcher
under the reference runner, and compares its rank's output with the single-process
reference. Results come back as one JSON file per rank; an exception in a case is recorded
(with where it was raised) and ends that rank's run, since the two ranks are then out of step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from ..dispatch import DispatchConfig
from ..plan import Backend
from ..spec import A2A, MoESpec

WORLD = 2
#: Seconds a collective may wait for the other rank (a dispatcher that hangs or desyncs the
#: ranks fails after this, instead of holding the run).
TIMEOUT_S = 30
#: Tokens each rank sends: unequal, so a dispatcher assuming equal counts is caught.
TOKENS = (16, 5)
REFERENCE = "reference:loop"

Case = tuple[Backend, MoESpec, DispatchConfig]


def make_host(factory: str, debug: bool = False):
    """The host a ``module:function`` factory returns (``""``: the installed plugins)."""
    from ..host import Host

    if not factory:
        return Host(debug=debug or None)
    import importlib

    module, _, func = factory.partition(":")
    host = getattr(importlib.import_module(module), func or "host")()
    host.debug = host.debug or debug
    return host


def _reference(host, spec: MoESpec, rank: int, seed: int):
    """The whole layer on one process (this rank's TP partition, every expert): its weights,
    this rank's tokens and their output."""
    from ..synthetic import random_inputs, random_weights

    full = spec.replace(tp_size=spec.moe_tp_size, ep_size=1, rank=spec.moe_tp_rank, a2a=A2A.NONE)
    weights = random_weights(full, seed=seed)  # the same seed on every rank: the same layer
    x, tw, ti = random_inputs(full, min(TOKENS[rank % len(TOKENS)], spec.max_tokens),
                              seed=seed + 100 + rank)  # each rank its own tokens
    return weights, (x, tw, ti), host.load(full, weights, force=REFERENCE, disable=())(x, tw, ti)


def run_case(host, backend: Backend, spec: MoESpec, cfg: DispatchConfig, rank: int,
             seed: int = 0, reference=None) -> dict[str, Any]:
    """One round trip on this rank of an initialized group of ``spec.ep_size`` ranks:
    ``{"error": relative error against the single-process reference}`` (or what is wrong).
    ``reference``: :func:`_reference`'s answer for this spec, when already computed."""
    from ..reference.oracle import relative_error

    weights, inputs, expected = reference or _reference(host, spec, rank, seed)
    mine = spec.replace(rank=rank * spec.moe_tp_size + spec.moe_tp_rank)
    # The reference runner, fed in the case's layout and wire by the dispatcher under test.
    local = host.resolve(mine.replace(a2a=A2A.NONE), force=REFERENCE, disable=())
    plan = dataclasses.replace(local, spec=mine, dispatch=cfg, dispatcher=backend)
    layer = host.load_dispatched(plan, weights.experts(mine.first_expert, mine.local_experts))
    got = layer(*inputs)
    if got.dtype != expected.dtype:
        return {"wrong": f"returned {got.dtype}; expected {expected.dtype}"}
    return {"error": relative_error(got, expected)}


def _child(rank: int, port: int, factory: str, debug: bool, cases: list[Case], seed: int,
           out: str) -> None:
    import torch
    import torch.distributed as dist

    from ..isolation import HookFailed

    torch.set_num_threads(1)  # two processes share the machine's cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S))
    records: list[dict[str, Any]] = []
    try:
        host = make_host(factory, debug)
        last = None  # cases of one spec come together: its reference is computed once
        for backend, spec, cfg in cases:
            try:
                if last is None or last[0] != spec:
                    last = spec, _reference(host, spec, rank, seed)
                records.append(run_case(host, backend, spec, cfg, rank, seed, last[1]))
            except Exception as e:  # noqa: BLE001 - reported by the parent, with where
                failed = HookFailed(e)
                records.append({"raised": str(failed), "where": failed.where,
                                "traceback": failed.traceback})
                break
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(records))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(factory: str, cases: Sequence[Case], *, seed: int = 0,
          debug: bool = False) -> list[list[dict[str, Any] | None]]:
    """Run ``cases`` on a fresh group of two processes: per case, each rank's record
    (None where that rank stopped before it)."""
    import torch.multiprocessing as mp

    cases = [(Backend(*str(b).split(":", 1)), s, c) for b, s, c in cases]
    with tempfile.TemporaryDirectory(prefix="moe-round-trip-") as out:
        mp.spawn(_child, args=(_free_port(), factory, debug, cases, seed, out), nprocs=WORLD,
                 join=True)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(WORLD)]
    return [[recs[i] if i < len(recs) else None for recs in ranks] for i in range(len(cases))]
