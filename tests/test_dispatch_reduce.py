"""The combine's local reduction against a float64 definition (CPU path; the Triton path
runs in the GPU loopback check, scripts/gpu_dispatch_loopback.py)."""

from __future__ import annotations

import pytest
import torch

from moe_core.kernels.combine import slot_positions, weighted_reduce


def test_weighted_reduce_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    n, k, H, P = 7, 3, 40, 12
    y = torch.randn(P, H, generator=g).bfloat16()
    pairs = torch.randperm(n * k, generator=g)[:P]  # slots with a local expert
    rows = torch.randperm(P, generator=g)
    pos = slot_positions(n, k, pairs, rows)
    w = torch.rand(n, k, generator=g)
    want = torch.zeros(n, H, dtype=torch.float64)
    for t in range(n):
        for s in range(k):
            if pos[t, s] >= 0:
                want[t] += w[t, s].double() * y[pos[t, s]].double()
    got = weighted_reduce(y, pos, w)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.double(), want, rtol=1e-2, atol=1e-2)
    assert (pos >= 0).sum() == P and set(pos[pos >= 0].tolist()) == set(range(P))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU for the Triton path: run on the device machine "
                           "(recorded in docs/results.md)")
def test_triton_reduce_matches_the_torch_path():
    g = torch.Generator().manual_seed(1)
    n, k, H, P = 300, 8, 7168, 1500
    y = torch.randn(P, H, generator=g).bfloat16()
    pos = slot_positions(n, k, torch.randperm(n * k, generator=g)[:P], torch.randperm(P, generator=g))
    w = torch.rand(n, k, generator=g)
    want = weighted_reduce(y, pos, w)
    got = weighted_reduce(y.cuda(), pos.cuda(), w.cuda()).cpu()
    assert (got.float() - want.float()).abs().max() <= 1e-2 * want.float().abs().max()
