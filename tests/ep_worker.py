"""An expert-parallel layer run on every rank of a process group, checked against the
single-process reference. Used by the CPU gloo test (tests/test_ep_dispatch.py) and, under
torchrun with NCCL, on the GPU machine (scripts/gpu_ep.sh):

    torchrun --nproc_per_node 2 tests/ep_worker.py --backend nccl --out results.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from moe_core import Host, Layout, MoESpec, Variant, Verdict, Wire, hookimpl
from moe_core.arch import detect_arch
from moe_core.reference.experts import ReferenceRunner
from moe_core.reference.oracle import relative_error
from moe_core.registry import Registry
from moe_core.synthetic import random_inputs, random_weights


class Declared:
    """The reference runner under declarations of its own: which layouts it takes, which
    wire formats (FP8 is dequantized on arrival, so the reference can take it)."""

    VARIANTS = [Variant("standard", 1000, "reference runner fed the standard layout",
                        layouts=(Layout.STANDARD,)),
                Variant("fp8_wire", 1000, "reference runner taking FP8 tokens", wire=(Wire.FP8,))]

    @hookimpl
    def moe_variants(self):
        return self.VARIANTS

    @hookimpl
    def supports_shape(self, spec):
        return [Verdict.yes(v.name, "test plugin") for v in self.VARIANTS]

    @hookimpl
    def make_runner(self, plan, weights):
        return ReferenceRunner(plan, weights)


#: (name, a2a mode, quant, force) -> the layout and wire format follow from resolution.
CASES = [("contiguous", "torch_a2a", "bf16", None), ("masked", "deepep_ll", "bf16", None),
         ("standard", "torch_a2a", "bf16", "declared:standard"),
         ("normal", "deepep_normal", "bf16", None),
         ("fp8 wire", "deepep_ll", "fp8_block128", "declared:fp8_wire")]


def full_spec(device: str, hidden: int, experts: int, top_k: int, intermediate: int) -> MoESpec:
    arch = "cpu" if device == "cpu" else detect_arch()
    return MoESpec(num_experts=experts, top_k=top_k, hidden_size=hidden,
                   intermediate_size=intermediate, arch=arch, max_tokens=256)


def run(rank: int, world: int, device: str, tokens: int = 48, hidden: int = 256, experts: int = 8,
        top_k: int = 4, intermediate: int = 128) -> list[dict]:
    """Every case on this rank; returns one record per case."""
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    reg = Registry.discover()
    reg.register(Declared(), "declared")
    host = Host(reg)
    out = []
    for name, a2a, quant, force in CASES:
        full = full_spec(device, hidden, experts, top_k, intermediate).replace(quant=quant)
        weights = random_weights(full)  # same seed on every rank: the same layer
        x, tw, ti = random_inputs(full, tokens, seed=100 + rank)  # each rank its own tokens
        ref = host.load(full, weights, force="reference:loop")(x, tw, ti)
        spec = full.replace(tp_size=world, ep_size=world, rank=rank, a2a=a2a)
        plan = host.resolve(spec, force=force, disable=[] if force else ["declared"])
        layer = host.load_dispatched(plan, weights.experts(spec.first_expert, spec.local_experts))
        got = layer(x, tw, ti)
        out.append(dict(case=name, rank=rank, runner=str(plan.backend), dispatcher=str(plan.dispatcher),
                        layout=plan.dispatch.layout.value, wire=plan.dispatch.wire.value,
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
    device = "cuda" if str(a.backend) == "nccl" else "cpu"
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
