"""An expert-parallel layer run on every rank of a process group, checked against the
single-process reference. Used by the CPU gloo test (tests/test_ep_dispatch.py) and, under
torchrun with NCCL, on the GPU machine (scripts/gpu_session.sh):

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
    wire formats, and whether it consumes FP8 tokens as they travel (the reference's
    quantized entry points dequantize them, so the dispatcher's wire tensors are checked)."""

    VARIANTS = [Variant("standard", 1000, "reference runner fed the standard layout",
                        layouts=(Layout.STANDARD,)),
                Variant("fp8_wire", 1000, "reference runner taking FP8 tokens", wire=(Wire.FP8,)),
                Variant("fp8_kept_masked", 1000, "FP8 tokens kept quantized, masked",
                        layouts=(Layout.MASKED,), wire=(Wire.FP8,), quantized_input=True),
                Variant("fp8_kept_contiguous", 1000, "FP8 tokens kept quantized, contiguous",
                        layouts=(Layout.CONTIGUOUS,), wire=(Wire.FP8,), quantized_input=True)]

    @hookimpl
    def moe_variants(self):
        return self.VARIANTS

    @hookimpl
    def supports_shape(self, spec):
        return [Verdict.yes(v.name, "test plugin") for v in self.VARIANTS]

    @hookimpl
    def make_runner(self, plan, weights):
        return ReferenceRunner(plan, weights)


#: (name, a2a mode, quant, force, disable) -> the layout and wire format follow from
#: resolution. ``None`` disables the test plugin, so the host picks among installed ones.
CASES = [("contiguous", "torch_a2a", "bf16", None, None),
         ("masked", "deepep_ll", "bf16", None, None),
         ("standard", "torch_a2a", "bf16", "declared:standard", None),
         ("normal", "deepep_normal", "bf16", None, None),
         ("fp8 wire", "deepep_ll", "fp8_block128", "declared:fp8_wire", None),
         ("fp8 kept masked", "deepep_ll", "fp8_block128", "declared:fp8_kept_masked", None),
         ("fp8 kept contiguous", "deepep_normal", "fp8_block128", "declared:fp8_kept_contiguous", None)]
#: On the GPUs, also the runners the host picks for fp8 layers (DeepGEMM's, FP8 kept on the
#: wire), FlashInfer CUTLASS (standard layout), and torch:all_to_all in DeepEP's place.
GPU_CASES = CASES + [
    ("ll fp8", "deepep_ll", "fp8_block128", None, None),
    ("normal fp8", "deepep_normal", "fp8_block128", None, None),
    ("cutlass normal", "deepep_normal", "bf16", "flashinfer_cutlass", None),
    ("cutlass normal fp8", "deepep_normal", "fp8_block128", "flashinfer_cutlass", None),
    ("a2a masked", "deepep_ll", "bf16", None, "deepep"),
    ("a2a masked fp8", "deepep_ll", "fp8_block128", None, "deepep"),
    ("a2a contiguous fp8", "deepep_normal", "fp8_block128", None, "deepep"),
]


def full_spec(device: str, hidden: int, experts: int, top_k: int, intermediate: int) -> MoESpec:
    arch = "cpu" if device == "cpu" else detect_arch()
    return MoESpec(num_experts=experts, top_k=top_k, hidden_size=hidden,
                   intermediate_size=intermediate, arch=arch, max_tokens=256)


def run(rank: int, world: int, device: str, tokens: int = 48, hidden: int = 256, experts: int = 8,
        top_k: int = 4, intermediate: int = 128, cases=CASES) -> list[dict]:
    """Every case on this rank; returns one record per case (a case that cannot be
    resolved or raises is recorded with its error, and the others still run)."""
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    reg = Registry.discover()
    reg.register(Declared(), "declared")
    host = Host(reg)
    out = []
    for name, a2a, quant, force, disable in cases:
        full = full_spec(device, hidden, experts, top_k, intermediate).replace(quant=quant)
        spec = full.replace(tp_size=world, ep_size=world, rank=rank, a2a=a2a)
        rec = dict(case=name, rank=rank)
        try:
            off = [disable] if disable else []
            plan = host.resolve(spec, force=force, disable=off if force else ["declared", *off])
        except Exception as e:  # noqa: BLE001 - the same on every rank: recorded, not raised
            out.append(dict(rec, failed=f"resolve: {e}"[:400]))
            continue
        rec.update(runner=str(plan.backend), dispatcher=str(plan.dispatcher),
                   layout=plan.dispatch.layout.value, wire=plan.dispatch.wire.value,
                   kept=plan.dispatch.deliver_quantized)
        weights = random_weights(full)  # same seed on every rank: the same layer
        x, tw, ti = random_inputs(full, tokens, seed=100 + rank)  # each rank its own tokens
        ref = host.load(full, weights, force="reference:loop")(x, tw, ti)
        layer = host.load_dispatched(plan, weights.experts(spec.first_expert, spec.local_experts))
        got = layer(x, tw, ti)
        out.append(dict(rec, error=relative_error(got, ref), device=str(got.device)))
    return out


def spawn_entry(rank: int, world: int, port: int, out_dir: str, interpret: bool = False) -> None:
    """``torch.multiprocessing.spawn`` target for the CPU (gloo) test; ``interpret``: the
    dispatcher's Triton kernels run in Triton's interpreter."""
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
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
                    run(rank, world, device, 128, hidden, experts, top_k, inter,
                        GPU_CASES if device == "cuda" else CASES)]
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
