"""align_by_expert against a plain-Python statement of the layout, on random routings."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_core.kernels.align import align_by_expert, capacity


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
    got = align_by_expert(t, first, num_local, block)
    rows, block_expert, slot_rows = _expected(ids, first, num_local, block)
    cap = capacity(T * k, num_local, block)
    assert got.sorted_slots.shape == (cap,) and got.sorted_slots.dtype == torch.int32
    assert got.sorted_slots.tolist() == rows + [T * k] * (cap - len(rows))
    assert got.block_expert.tolist() == block_expert + [-1] * (cap // block - len(block_expert))
    assert got.rows_used.tolist() == [len(rows)]
    assert got.slot_rows.tolist() == slot_rows
    assert got.counts.tolist() == [sum(g - first == e for r in ids for g in r) for e in range(num_local)]


def test_capacity_bounds_every_routing():
    # Worst case: every slot on its own expert's block boundary.
    assert capacity(8, 4, 128) == 128 * 5
    assert capacity(0, 2, 4) == 8


def test_rejects_a_bad_block():
    with pytest.raises(ValueError, match="block"):
        align_by_expert(torch.zeros(2, 2, dtype=torch.int64), 0, 4, 0)
