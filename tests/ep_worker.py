"""An expert-parallel layer run on every rank of a process group, checked against the
single-process reference. Used by the CPU gloo test (tests/test_ep_dispatch.py) and, under
torchrun with NCCL, on the GPU machine (scripts/gpu_ep.sh):

    torchrun --nproc_per_node 2 tests/ep_worker.py --backend nccl --out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch
import torch.distributed as dist

from moe_core import Host, MoESpec, Variant, Verdict, hookimpl
from moe_core.arch import detect_arch
from moe_core.dispatch import STANDARD
from moe_core.reference.experts import ReferenceRunner
from moe_core.reference.oracle import relative_error
from moe_core.registry import Registry
from moe_core.synthetic import random_inputs, random_weights


class StandardLayout:
    """The reference runner asking the dispatcher for the standard layout."""

    @hookimpl
    def moe_variants(self):
        return [Variant("standard", 1000, "reference runner fed the standard layout")]

    @hookimpl
    def supports_shape(self, spec):
        return [Verdict.yes("standard", "test plugin")]

    @hookimpl
    def configure_dispatcher(self, plan, dispatcher):
        return dataclasses.replace(dispatcher, layout=STANDARD)

    @hookimpl
    def make_runner(self, plan, weights):
        return ReferenceRunner(plan, weights)


#: (name, a2a mode, force) -> the layout and wire dtype follow from resolution.
CASES = [("contiguous", "torch_a2a", None), ("masked", "deepep_ll", None),
         ("standard", "torch_a2a", "standard_layout"), ("normal", "deepep_normal", None)]


def full_spec(device: str, hidden: int, experts: int, top_k: int, intermediate: int) -> MoESpec:
    arch = "cpu" if device == "cpu" else detect_arch()
    return MoESpec(num_experts=experts, top_k=top_k, hidden_size=hidden,
                   intermediate_size=intermediate, arch=arch, max_tokens=256)


def run(rank: int, world: int, device: str, tokens: int = 48, hidden: int = 256, experts: int = 8,
        top_k: int = 4, intermediate: int = 128) -> list[dict]:
    """Every case on this rank; returns one record per case."""
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    full = full_spec(device, hidden, experts, top_k, intermediate)
    reg = Registry.discover()
    reg.register(StandardLayout(), "standard_layout")
    host = Host(reg)
    weights = random_weights(full)  # same seed on every rank: the same layer
    x, tw, ti = random_inputs(full, tokens, seed=100 + rank)  # each rank its own tokens
    ref = host.load(full, weights, force="reference:loop")(x, tw, ti)
    out = []
    for name, a2a, force in CASES:
        spec = full.replace(tp_size=world, ep_size=world, rank=rank, a2a=a2a)
        plan = host.resolve(spec, force=force, disable=[] if force else ["standard_layout"])
        layer = host.load_dispatched(plan, weights.experts(spec.first_expert, spec.local_experts))
        got = layer(x, tw, ti)
        out.append(dict(case=name, rank=rank, runner=plan.backend, dispatcher=plan.dispatcher,
                        layout=plan.dispatch.layout, wire=plan.dispatch.dtype,
                        error=relative_error(got, ref), device=str(got.device)))
    return out


def spawn_entry(rank: int, world: int, port: int, out_dir: str) -> None:
    """``torch.multiprocessing.spawn`` target for the CPU (gloo) test."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        records = run(rank, world, "cpu")
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(records, f)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="nccl")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dist.init_process_group(a.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if a.backend == "nccl" else "cpu"
    records = []
    for hidden, experts, top_k, inter in [(256, 8, 4, 128), (4096, 32, 8, 1536), (7168, 16, 8, 2048)]:
        records += [dict(r, hidden=hidden, experts=experts) for r in
                    run(rank, world, device, 128, hidden, experts, top_k, inter)]
    gathered = [None] * world
    dist.all_gather_object(gathered, records)
    if rank == 0:
        flat = [r for rs in gathered for r in rs]
        for r in flat:
            print(json.dumps(r))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(flat, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
