"""A real 2-process expert-parallel layer over gloo: every layout and wire dtype the host
resolves gives the single-process reference's output."""

from __future__ import annotations

import json
import socket

import pytest
import torch.multiprocessing as mp

import ep_worker

TOLERANCE = {"bf16": 1e-2, "fp8": 6e-2}  # wire format: bf16 rounding, fp8 1x128 groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["torch", "triton"])
def records(request, tmp_path_factory):
    """Both implementations of the dispatcher's packing: PyTorch, and the Triton kernels in
    Triton's interpreter (what runs on CUDA)."""
    if request.param == "triton":
        pytest.importorskip("triton", reason="triton is in requirements-dev.txt")
    out = tmp_path_factory.mktemp("ep")
    mp.spawn(ep_worker.spawn_entry, args=(2, _free_port(), str(out), request.param == "triton"),
             nprocs=2, join=True)
    return [r for rank in (0, 1) for r in json.loads((out / f"rank{rank}.json").read_text())]


@pytest.mark.parametrize("case, layout, wire, kept", [
    ("contiguous", "contiguous", "bf16", False),
    ("masked", "masked", "bf16", False),  # a bf16 layer moves bf16, even on DeepEP LL (S4)
    ("standard", "standard", "bf16", False),
    ("normal", "contiguous", "bf16", False),
    ("fp8 wire", "masked", "fp8", False),
    # a runner that declares quantized_input gets the FP8 tensors and scales themselves
    ("fp8 kept masked", "masked", "fp8", True),
    ("fp8 kept contiguous", "contiguous", "fp8", True)])
def test_ep2_over_gloo_matches_the_single_process_reference(records, case, layout, wire, kept):
    mine = [r for r in records if r["case"] == case]
    assert len(mine) == 2, mine  # both ranks ran it
    for r in mine:
        # DeepEP is not importable on CPU: its modes fall through to the torch dispatcher.
        assert r["dispatcher"] == "torch:all_to_all", r
        assert (r["layout"], r["wire"], r["kept"]) == (layout, wire, kept)
        assert 0 < r["error"] < TOLERANCE[wire], r
