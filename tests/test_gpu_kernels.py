"""moe_core.kernels' Triton kernels on a CUDA GPU against their torch path (the CPU tests
check the torch path against plain statements), at DeepSeek-V3 EP 8 expert shapes."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from moe_core.kernels.align import align_masked, align_torch, align_triton
from moe_core.kernels.permute import permute_contiguous, permute_masked, unpermute

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run scripts/gpu_session.sh "
                       "on the device machine (recorded in docs/results.md)"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not importable"),
]

E, H, K_TOP, NUM_EXPERTS, FIRST = 32, 7168, 8, 256, 96  # rank 3 of EP 8


def _routing(T, seed, num_local=E, first=FIRST):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, NUM_EXPERTS, generator=gen)
    logits[:, first: first + num_local // 4] += 2.0  # ragged: a few hot local experts
    ids = logits.topk(K_TOP, dim=-1).indices
    x = torch.randn(T, H, generator=gen).to(torch.bfloat16)
    w = torch.rand(T, K_TOP, generator=gen)
    return x, ids, w


@pytest.mark.parametrize("T", [0, 1, 4, 128, 512, 2048, 5000])
@pytest.mark.parametrize("block", [1, 128])
def test_align_kernels_match_the_torch_path(T, block):
    _, ids, _ = _routing(T, T)
    got = align_triton(ids.cuda(), FIRST, E, block)
    want = align_torch(ids, FIRST, E, block)
    for name, a, b in zip(want._fields, got, want):
        assert torch.equal(a.cpu(), b), name
    m = max(T, 1)
    got_m, want_m = align_masked(ids.cuda(), FIRST, E, m), align_masked(ids, FIRST, E, m)
    for name, a, b in zip(want_m._fields, got_m, want_m):
        assert torch.equal(a.cpu(), b), name


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("T", [1, 4, 128, 2048])
def test_permute_kernels_match_the_torch_path(T, fp8):
    x, ids, w = _routing(T, T + 1)
    for permute, arg in ((permute_contiguous, 128), (permute_masked, -(-T // 128) * 128)):
        got = permute(x.cuda(), ids.cuda(), FIRST, E, arg, fp8=fp8)
        want = permute(x, ids, FIRST, E, arg, fp8=fp8)
        assert torch.equal(got.slot_rows.cpu(), want.slot_rows)
        if permute is permute_contiguous:
            assert torch.equal(got.m_indices.cpu(), want.m_indices)
            keep = (want.m_indices >= 0)  # rows DeepGEMM computes; the rest is unspecified
            pick = lambda t: t[keep]  # noqa: E731
        else:
            assert torch.equal(got.masked_m.cpu(), want.masked_m)
            keep = torch.arange(arg)[None, :] < want.masked_m[:, None]
            pick = lambda t: t[keep]  # noqa: E731
        if fp8:
            (q, s), (q_ref, s_ref) = got.rows, want.rows
            assert s.stride(-2) == 1, "scales must be MN-major"
            torch.testing.assert_close(pick(s.cpu()), pick(s_ref), rtol=1e-6, atol=0)
            diff = (pick(q.cpu()).float() - pick(q_ref).float()).abs()
            assert diff.max() <= 32, "at most one e4m3 step apart near 448"
        else:
            assert torch.equal(pick(got.rows.cpu()), pick(want.rows))


@pytest.mark.parametrize("T", [1, 512])
def test_combine_kernel_matches_the_torch_path(T):
    x, ids, w = _routing(T, 7)
    p = permute_contiguous(x.cuda(), ids.cuda(), FIRST, E, 128, fp8=False)
    y = p.rows * 2
    got = unpermute(y, p.slot_rows, w.cuda())
    want = unpermute(y.cpu(), p.slot_rows.cpu(), w)
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("layout", ["contiguous", "masked"])
def test_permute_and_combine_capture_in_a_cuda_graph(layout):
    """Replayed on new inputs, a captured permute (+ fp8 quant) and combine give what an
    eager call gives on those inputs: no host sync, no data-sized allocation."""
    x, ids, w = (t.cuda() for t in _routing(256, 3))

    def run():
        if layout == "masked":
            p = permute_masked(x, ids, FIRST, E, 256, fp8=True)
            y = p.rows[0][..., :1].float().expand(-1, -1, H).to(torch.bfloat16)  # any rows
        else:
            p = permute_contiguous(x, ids, FIRST, E, 128, fp8=False)
            y = p.rows
        return unpermute(y, p.slot_rows, w)

    first = run()  # compiles the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for dst, src in zip((x, ids, w), _routing(256, 4)):
        dst.copy_(src)
    graph.replay()
    assert torch.equal(out, run()) and not torch.equal(out, first)
