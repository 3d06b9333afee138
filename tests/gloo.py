"""Run a test worker on several CPU processes over gloo (``torch.multiprocessing.spawn``),
and gather per-rank records (also under torchrun)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(entry, world: int, *args) -> None:
    """``entry(rank, world, port, *args)`` on ``world`` processes; raises if one fails."""
    mp.spawn(entry, args=(world, free_port(), *args), nprocs=world, join=True)


def init(rank: int, world: int, port: int) -> None:
    """Join the gloo group of a :func:`spawn` (torchrun-style variables set, for libraries
    that read them)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def gather(records: list) -> list | None:
    """Every rank's records, flattened, on rank 0 (None elsewhere)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, records)
    return [r for rs in out for r in rs] if dist.get_rank() == 0 else None


def save_records(rank: int, world: int, port: int, out_dir: str, make_records) -> None:
    """In a :func:`spawn` process: join the group, write ``make_records()`` to
    ``out_dir/rank<N>.json``, leave the group."""
    init(rank, world, port)
    try:
        records = make_records()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(records))
    finally:
        dist.destroy_process_group()


def load_records(out_dir, world: int) -> list:
    """What :func:`save_records` wrote on every rank, in rank order."""
    return [r for rank in range(world) for r in json.loads(Path(out_dir, f"rank{rank}.json").read_text())]
