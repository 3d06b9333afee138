"""Expert parallelism on the 2 x H200 machine (issue #15), run by scripts/gpu_session.sh:
both DeepEP dispatchers and ``torch:all_to_all`` over NCCL with the runners the host picks,
bf16 and fp8 on the wire, against the single-process reference; FP8 kept quantized for
DeepGEMM; the plugin's buffer sizing against DeepEP's own hints; no host synchronisation in
``torch:all_to_all`` beyond its count exchange; the Triton packing against PyTorch's.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: run scripts/gpu_session.sh on the 2 x H200 machine"),
]
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (nvidia-h200-x2)")
HAS = {m: importlib.util.find_spec(m) is not None for m in ("deep_ep", "deep_gemm", "flashinfer")}
TOLERANCE = {"bf16": 1e-2, "fp8": 6e-2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_entry(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    import ep_worker

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    records = []
    try:
        for hidden, experts, top_k, inter in [(4096, 32, 8, 1536), (7168, 16, 8, 2048)]:
            records += [dict(r, hidden=hidden) for r in
                        ep_worker.run(rank, world, "cuda", 128, hidden, experts, top_k, inter,
                                      ep_worker.GPU_CASES)]
    finally:
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(records, f)
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep_nccl")
    mp.spawn(_nccl_entry, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [r for rank in (0, 1) for r in json.loads((out / f"rank{rank}.json").read_text())]


#: case -> (runner plugin, dispatcher, layout, wire, kept), where the libraries are built.
EXPECTED = {
    "masked": ("deepgemm", "deepep:low_latency", "masked", "bf16", False),  # S4 on the wire
    "normal": ("deepgemm", "deepep:normal", "contiguous", "bf16", False),
    "ll fp8": ("deepgemm", "deepep:low_latency", "masked", "fp8", True),
    "normal fp8": ("deepgemm", "deepep:normal", "contiguous", "fp8", True),
    "fp8 kept masked": ("declared", "deepep:low_latency", "masked", "fp8", True),
    "fp8 kept contiguous": ("declared", "deepep:normal", "contiguous", "fp8", True),
    "cutlass normal": ("flashinfer_cutlass", "deepep:normal", "standard", "bf16", False),
    "cutlass normal fp8": ("flashinfer_cutlass", "deepep:normal", "standard", "fp8", False),
    "a2a masked": ("deepgemm", "torch:all_to_all", "masked", "bf16", False),
    "a2a masked fp8": ("deepgemm", "torch:all_to_all", "masked", "fp8", True),
    "a2a contiguous fp8": ("deepgemm", "torch:all_to_all", "contiguous", "fp8", True),
}


@TWO_GPUS
@pytest.mark.parametrize("case", sorted({c[0] for c in __import__("ep_worker").GPU_CASES}))
def test_ep2_over_nccl_matches_the_single_process_reference(records, case):
    mine = [r for r in records if r["case"] == case]
    assert len(mine) == 4, mine  # two ranks, two shapes
    for r in mine:
        if "failed" in r:
            needs = "flashinfer" if "cutlass" in case else "deep_gemm"
            if not HAS[needs]:
                pytest.skip(f"{needs} is not built here: {r['failed'][:200]}")
            pytest.fail(f"{case}: {r['failed']}")
        assert 0 < r["error"] < TOLERANCE[r["wire"]], r
        want = EXPECTED.get(case)
        if want is None:
            continue
        plugin, dispatcher, layout, wire, kept = want
        if dispatcher.startswith("deepep") and not HAS["deep_ep"]:
            dispatcher = "torch:all_to_all"
        if plugin == "deepgemm" and not HAS["deep_gemm"]:
            continue
        assert (r["runner"].split(":")[0], r["dispatcher"]) == (plugin, dispatcher), r
        assert (r["layout"], r["wire"], r["kept"]) == (layout, wire, kept), r


@pytest.mark.skipif(not HAS["deep_ep"], reason="deep_ep is not built (scripts/gpu_build_deepep.sh)")
@pytest.mark.parametrize("hidden, ranks, experts", [(7168, 2, 256), (4096, 2, 32), (2048, 8, 64),
                                                    (7168, 16, 256), (8192, 160, 320)])
def test_plugin_buffer_sizing_is_deepeps(hidden, ranks, experts):
    import deep_ep

    from moe_plugin_deepep import sizing

    B = deep_ep.Buffer
    for tokens in (128, 1024):
        assert sizing.low_latency_bytes(tokens, hidden, ranks, experts) == \
            B.get_low_latency_rdma_size_hint(tokens, hidden, ranks, experts)
    for mine, theirs in ((sizing.DISPATCH_CONFIG[ranks], B.get_dispatch_config(ranks)),
                         (sizing.COMBINE_CONFIG[ranks], B.get_combine_config(ranks))):
        assert sizing.nvl_bytes(mine, hidden * 2, ranks) == theirs.get_nvl_buffer_size_hint(hidden * 2, ranks)
        assert sizing.rdma_bytes(mine, hidden * 2, ranks) == theirs.get_rdma_buffer_size_hint(hidden * 2, ranks)


def test_torch_all_to_all_reads_the_device_once():
    """dispatch + combine on CUDA (a one-rank exchange): CUDA's sync debug mode sees one
    synchronisation, the count exchange's read of the split sizes."""
    import torch.distributed as dist
    from test_a2a_rows import identity_output, one_rank_all_to_all

    from moe_core.tokens import Layout, Wire

    real = dist.all_to_all_single
    dist.all_to_all_single = lambda out, inp, *a, **k: out.copy_(inp)
    try:
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(64, 7168, generator=gen, device="cuda").bfloat16()
        ids = torch.rand(64, 16, generator=gen, device="cuda").topk(8, dim=1).indices
        w = torch.full((64, 8), 0.125, device="cuda")
        for layout in Layout:
            for wire, kept in ((Wire.BF16, False), (Wire.FP8, False), (Wire.FP8, True)):
                d = one_rank_all_to_all(layout, wire, kept=kept, hidden=7168, top_k=8, tokens=64)
                for _ in range(2):  # warm: Triton compiles on the first call
                    got = d.dispatch(x, ids, w)
                    y = identity_output(got)
                    d.combine(y, got)
                torch.cuda.synchronize()
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        got = d.dispatch(x, ids, w)
                        d.combine(y, got)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                syncs = [str(s.message) for s in seen if "synchroniz" in str(s.message)]
                assert len(syncs) == 1, (layout, wire, kept, syncs)
    finally:
        dist.all_to_all_single = real


def test_triton_packing_matches_the_torch_path_on_cuda():
    from moe_core.tokens import Wire
    from moe_core.torch_dispatch import rows as R

    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(300, 7168, generator=gen, device="cuda").bfloat16() * 5
    ids = torch.randint(0, 256, (300, 8), generator=gen, device="cuda")
    w = torch.rand(300, 8, generator=gen, device="cuda")
    dest = torch.where(torch.rand(300, 2, generator=gen, device="cuda") < 0.7, 1, -1)
    dest = torch.where(dest > 0, torch.arange(600, device="cuda").view(300, 2), -1).to(torch.int32)
    for wire in (Wire.BF16, Wire.FP8, Wire.FP8_UE8M0):
        fmt = R.RowFormat(7168, 8, wire)
        a = torch.zeros(600, fmt.row_bytes, dtype=torch.uint8, device="cuda")
        b = torch.zeros_like(a)
        R._pack_torch(fmt, x, ids, w, dest, a)
        R._pack_triton(fmt, x, ids, w, dest, b)
        assert torch.equal(a, b), (wire, (a != b).sum().item())


@pytest.mark.skipif(not HAS["deep_gemm"], reason="deep_gemm is not built (scripts/gpu_build_deepgemm.sh)")
@pytest.mark.parametrize("variant", ["masked", "masked_fused", "contiguous", "contiguous_fused"])
def test_deepgemm_takes_fp8_tokens_as_they_travel(variant):
    from moe_core import Host, MoESpec
    from moe_core.quant.fp8 import quantize_fp8_blockwise
    from moe_core.reference.oracle import relative_error
    from moe_core.runner import dequantize_wire
    from moe_core.synthetic import random_weights

    spec = MoESpec(num_experts=8, top_k=2, hidden_size=7168, intermediate_size=2048,
                   quant="fp8_block128", arch="sm90", max_tokens=128)
    host = Host()
    plan = host.resolve(spec, force=f"deepgemm:{variant}")
    runner = host.load(plan, random_weights(spec, device="cuda")).runner
    gen = torch.Generator(device="cuda").manual_seed(2)
    if variant.startswith("masked"):
        x = torch.randn(8, 256, 7168, generator=gen, device="cuda").bfloat16()
        counts = torch.tensor([7, 0, 256, 3, 100, 1, 0, 64], dtype=torch.int32, device="cuda")
        q, s = quantize_fp8_blockwise(x, 1, 128)
        s = s.transpose(1, 2).contiguous().transpose(1, 2)  # MN-major, as DeepEP delivers them
        got = runner.run_masked_quantized((q, s), counts)
        want = runner.run_masked(dequantize_wire((q, s)), counts)
        valid = torch.arange(256, device="cuda")[None, :] < counts[:, None]
        got, want = got[valid], want[valid]
    else:
        x = torch.randn(500, 7168, generator=gen, device="cuda").bfloat16()
        offsets = torch.tensor([0, 12, 12, 300, 301, 400, 450, 450, 500], device="cuda")
        q, s = quantize_fp8_blockwise(x, 1, 128)
        got = runner.run_contiguous_quantized((q, s), offsets)
        want = runner.run_contiguous(dequantize_wire((q, s)), offsets)
    assert relative_error(got, want) < 1e-2
