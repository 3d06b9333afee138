"""align_by_expert and align_masked against a plain-Python statement of each layout, on
random routings: the torch path in process, the Triton kernels under the interpreter."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interpret import run_interpreted
from moe_core.kernels.align import align_by_expert, align_masked, align_torch, capacity


def _expected(ids: list[list[int]], first: int, num_local: int, block: int):
    n = sum(len(r) for r in ids)
    flat = [e for r in ids for e in r]
    rows, block_expert, slot_rows = [], [], [-1] * n
    for e in range(num_local):
        mine = [i for i, g in enumerate(flat) if g - first == e]
        for i in mine:
            slot_rows[i] = len(rows)
            rows.append(i)
        pad = -len(mine) % block
        rows += [n] * pad
        block_expert += [e] * ((len(mine) + pad) // block)
    return rows, block_expert, slot_rows


def check_aligned(got, ids: list[list[int]], T: int, k: int, first: int, num_local: int, block: int):
    rows, block_expert, slot_rows = _expected(ids, first, num_local, block)
    cap = capacity(T * k, num_local, block)
    assert got.sorted_slots.shape == (cap,) and got.sorted_slots.dtype == torch.int32
    assert got.sorted_slots.tolist() == rows + [T * k] * (cap - len(rows))
    assert got.block_expert.tolist() == block_expert + [-1] * (cap // block - len(block_expert))
    assert got.rows_used.tolist() == [len(rows)]
    assert got.slot_rows.tolist() == slot_rows
    assert got.counts.tolist() == [sum(g - first == e for r in ids for g in r) for e in range(num_local)]


def check_masked(got, ids: list[list[int]], first: int, num_local: int, max_m: int):
    flat = [e for r in ids for e in r]
    seen = [0] * num_local
    slot_rows = []
    for g in flat:
        e = g - first
        if 0 <= e < num_local and seen[e] < max_m:
            slot_rows.append(e * max_m + seen[e])
        else:
            slot_rows.append(-1)
        if 0 <= e < num_local:
            seen[e] += 1
    assert got.slot_rows.dtype == got.masked_m.dtype == torch.int32
    assert got.slot_rows.tolist() == slot_rows
    assert got.masked_m.tolist() == [min(c, max_m) for c in seen]


def _routing(rng: random.Random, T: int, k: int, first: int, num_local: int, extra: int = 3):
    ids = [[rng.randint(0, first + num_local + extra) for _ in range(k)] for _ in range(T)]
    return ids, torch.tensor(ids, dtype=torch.int64).reshape(T, k)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_the_plain_statement(data):
    num_local = data.draw(st.integers(1, 6))
    first = data.draw(st.integers(0, 8))
    block = data.draw(st.sampled_from([1, 2, 4, 16]))
    k = data.draw(st.integers(1, 4))
    T = data.draw(st.integers(0, 12))
    ids = [[data.draw(st.integers(0, first + num_local + 3)) for _ in range(k)] for _ in range(T)]
    t = torch.tensor(ids, dtype=torch.int64).reshape(T, k)
    check_aligned(align_by_expert(t, first, num_local, block), ids, T, k, first, num_local, block)
    max_m = data.draw(st.integers(1, 2 * T + 1))  # below T: slots past max_m dropped
    check_masked(align_masked(t, first, num_local, max_m), ids, first, num_local, max_m)


#: (T, k, first, num_local, block): zero and one token, ragged counts with empty experts,
#: EP (ids of other ranks on both sides), more slots than one kernel chunk (C = 8192 / 16
#: one-hot lanes: T * k > 512 takes the two-kernel path), more experts than 16 lanes, one
#: chunk of slots but more rows than one program's tile (R = 512 rows: 1024 here).
INTERPRETED = [(0, 4, 0, 3, 16), (1, 1, 0, 1, 1), (1, 8, 2, 4, 4), (5, 2, 0, 6, 2), (12, 4, 3, 5, 16),
               (7, 3, 8, 2, 1), (200, 4, 0, 6, 16), (300, 3, 1, 4, 128), (40, 8, 0, 40, 4),
               (600, 2, 5, 33, 8), (4, 4, 0, 8, 128)]


@pytest.fixture(scope="module")
def interpreted():
    rng = random.Random(13)
    cases, calls = [], []
    for T, k, first, num_local, block in INTERPRETED:
        ids, t = _routing(rng, T, k, first, num_local)
        t = t.to(torch.int32) if T % 2 else t  # both id dtypes
        max_m = max(1, T - 2)  # T - 2: a crowded expert loses its last slots
        cases.append((ids, T, k, first, num_local, block, max_m))
        calls += [("align_by_expert", (t, first, num_local, block), {}),
                  ("align_masked", (t, first, num_local, max_m), {})]
    return cases, run_interpreted(calls)


@pytest.mark.parametrize("case", range(len(INTERPRETED)), ids=[str(c) for c in INTERPRETED])
def test_triton_kernels_match_the_plain_statement(interpreted, case):
    cases, results = interpreted
    ids, T, k, first, num_local, block, max_m = cases[case]
    check_aligned(results[2 * case], ids, T, k, first, num_local, block)
    check_masked(results[2 * case + 1], ids, first, num_local, max_m)


def test_torch_path_on_the_interpreted_cases():
    rng = random.Random(13)
    for T, k, first, num_local, block in INTERPRETED:
        ids, t = _routing(rng, T, k, first, num_local)
        check_aligned(align_torch(t, first, num_local, block), ids, T, k, first, num_local, block)


def test_capacity_bounds_every_routing():
    # Worst case: every slot on its own expert's block boundary.
    assert capacity(8, 4, 128) == 128 * 5
    assert capacity(0, 2, 4) == 8


def test_rejects_a_bad_block():
    with pytest.raises(ValueError, match="block"):
        align_by_expert(torch.zeros(2, 2, dtype=torch.int64), 0, 4, 0)
    with pytest.raises(ValueError, match="max_m"):
        align_masked(torch.zeros(2, 2, dtype=torch.int64), 0, 4, 0)


def test_expert_of_rows_reads_the_offsets():
    from moe_core.runner import expert_of_rows

    offsets = torch.tensor([0, 2, 2, 5, 6])  # expert 1 has no rows
    assert expert_of_rows(offsets, 6).tolist() == [0, 0, 2, 2, 2, 3]
    assert expert_of_rows(offsets, 0).tolist() == []
