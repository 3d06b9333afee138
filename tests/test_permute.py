"""permute_contiguous / permute_masked / unpermute against a plain statement of each layout:
the torch path in process, the Triton kernels under the interpreter (tiny shapes)."""

from __future__ import annotations

import random

import pytest
import torch

from interpret import run_interpreted
from moe_core.kernels.permute import permute_contiguous, permute_masked, unpermute
from moe_core.quant.fp8 import quantize_fp8_blockwise
from test_align import check_aligned, check_masked

H = 256  # two 1x128 groups
#: (T, k, first, num_local, align): zero and one token, ragged counts with empty experts,
#: EP (ids of other ranks), an align below the gather's 32-row tile, DeepGEMM's 128.
CASES = [(0, 2, 0, 3, 16), (1, 1, 0, 1, 16), (1, 4, 2, 4, 128), (6, 2, 0, 8, 16),
         (9, 3, 4, 3, 8), (20, 4, 1, 5, 128)]


def _inputs(case, seed):
    T, k, first, num_local, _ = case
    rng = random.Random(seed)
    # distinct ids per token, as a top-k gives; some of other ranks
    ids = [rng.sample(range(first + num_local + 3), k) for _ in range(T)]
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, H, generator=gen) * 3).to(torch.bfloat16)
    w = torch.rand(T, k, generator=gen)
    return ids, torch.tensor(ids, dtype=torch.int64).reshape(T, k), x, w


def _expected_rows(x: torch.Tensor, slots: list[int], k: int) -> torch.Tensor:
    """Rows holding ``x[slot // k]``, zeros where the slot is ``None``."""
    out = torch.zeros(len(slots), H, dtype=x.dtype)
    for r, s in enumerate(slots):
        if s is not None:
            out[r] = x[s // k]
    return out


def _check_rows(got, want: torch.Tensor, fp8: bool):
    """FP8 rows: the bytes of :func:`quantize_fp8_blockwise`, interpreted kernels included
    (their e4m3 rounding is the GPU's: :mod:`moe_core.kernels.triton_fp8`)."""
    if not fp8:
        assert got.dtype == want.dtype and torch.equal(got, want)
        return
    q, s = got
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    q_ref, s_ref = quantize_fp8_blockwise(want, 1, 128)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def _mn_major(s: torch.Tensor) -> bool:
    return s.shape[-2] <= 1 or s.stride(-2) == 1


def check_contiguous(got, case, ids, x, fp8):
    T, k, first, num_local, align = case
    n = T * k
    check_aligned(got.routes, ids, T, k, first, num_local, align)
    slots = got.routes.sorted_slots.tolist()
    be = got.routes.block_expert.tolist()
    assert got.m_indices.dtype == torch.int32
    assert got.m_indices.tolist() == [be[r // align] if s < n else -1 for r, s in enumerate(slots)]
    if fp8:
        assert _mn_major(got.rows[1]), "scales must be MN-major (DeepGEMM's layout)"
    used = int(got.routes.rows_used)  # rows past it are never read by DeepGEMM: unspecified
    rows = got.rows[:used] if not fp8 else (got.rows[0][:used], got.rows[1][:used])
    _check_rows(rows, _expected_rows(x, [s if s < n else None for s in slots[:used]], k), fp8)


def check_masked_rows(got, case, ids, x, fp8, max_m):
    T, k, first, num_local, _ = case
    check_masked(got, ids, first, num_local, max_m)
    if fp8:
        assert _mn_major(got.rows[1]), "scales must be MN-major (DeepGEMM's layout)"
    rows_of = {r: s for s, r in enumerate(got.slot_rows.tolist()) if r >= 0}
    for e, m in enumerate(got.masked_m.tolist()):  # rows past masked_m[e]: unspecified
        rows = got.rows[e, :m] if not fp8 else (got.rows[0][e, :m], got.rows[1][e, :m])
        _check_rows(rows, _expected_rows(x, [rows_of[e * max_m + r] for r in range(m)], k), fp8)


def _max_m(T):
    return max(1, T)


@pytest.fixture(scope="module")
def interpreted():
    calls = []
    for i, case in enumerate(CASES):
        T, k, first, num_local, align = case
        _, t, x, w = _inputs(case, i)
        for fp8 in (False, True):
            calls += [("permute_contiguous", (x, t, first, num_local, align), {"fp8": fp8}),
                      ("permute_masked", (x, t, first, num_local, _max_m(T)), {"fp8": fp8})]
        calls.append(("unpermute", _combine_inputs(i, T, k), {}))
    return run_interpreted(calls)


def _combine_inputs(seed, T, k):
    """Expert outputs ``y`` (NaN on the rows no slot names), slot positions, weights."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    P = 2 * T + 3
    pos = torch.tensor([rng.randrange(-1, P) for _ in range(T * k)], dtype=torch.int32)
    y = torch.randn(P, H, generator=gen)
    unnamed = torch.ones(P, dtype=torch.bool)
    unnamed[pos[pos >= 0].long()] = False
    y[unnamed] = float("nan")
    return y.to(torch.bfloat16), pos, torch.rand(T, k, generator=gen)


def _combined(y, pos, w):
    T, k = w.shape
    out = torch.zeros(T, H)
    for t in range(T):
        for s in range(k):
            if pos[t * k + s] >= 0:
                out[t] += w[t, s] * y[pos[t * k + s]].float()
    return out


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("i", range(len(CASES)), ids=[str(c) for c in CASES])
def test_torch_path_matches_the_statement(i, fp8):
    case = CASES[i]
    ids, t, x, _ = _inputs(case, i)
    T, k, first, num_local, align = case
    check_contiguous(permute_contiguous(x, t, first, num_local, align, fp8=fp8), case, ids, x, fp8)
    check_masked_rows(permute_masked(x, t, first, num_local, _max_m(T), fp8=fp8), case, ids, x, fp8, _max_m(T))


@pytest.mark.parametrize("i", range(len(CASES)), ids=[str(c) for c in CASES])
def test_triton_kernels_match_the_statement(interpreted, i):
    case = CASES[i]
    ids, _, x, _ = _inputs(case, i)
    T, k = case[:2]
    got = interpreted[5 * i: 5 * i + 5]
    for j, fp8 in enumerate((False, True)):
        check_contiguous(got[2 * j], case, ids, x, fp8)
        check_masked_rows(got[2 * j + 1], case, ids, x, fp8, _max_m(T))
    assert got[4].dtype == torch.bfloat16 and got[4].shape == (T, H)
    torch.testing.assert_close(got[4].float(), _combined(*_combine_inputs(i, T, k)), rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[str(c) for c in CASES])
def test_torch_combine_matches_the_statement(i):
    T, k = CASES[i][:2]
    y, pos, w = _combine_inputs(i, T, k)
    got = unpermute(y, pos, w)
    assert got.dtype == torch.bfloat16 and got.shape == (T, H)
    torch.testing.assert_close(got.float(), _combined(y, pos, w), rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[str(c) for c in CASES])
def test_permute_then_combine_sums_each_tokens_local_slots(i):
    T, k, first, num_local, align = case = CASES[i]
    ids, t, x, w = _inputs(case, i)
    want = torch.zeros(T, H)
    for tok in range(T):
        for s in range(k):
            if 0 <= ids[tok][s] - first < num_local:
                want[tok] += 2 * w[tok, s] * x[tok].float()
    for p in (permute_masked(x, t, first, num_local, _max_m(T), fp8=False),
              permute_contiguous(x, t, first, num_local, align, fp8=False)):
        y = (p.rows.float() * 2).to(torch.bfloat16)  # an "expert" that doubles its rows
        torch.testing.assert_close(unpermute(y, p.slot_rows, w).float(), want, rtol=2e-2, atol=2e-2)


def test_rejects_unaligned_fp8_rows():
    with pytest.raises(ValueError, match="multiple"):
        permute_contiguous(torch.zeros(2, 100), torch.zeros(2, 1, dtype=torch.int64), 0, 2, 16, fp8=True)
