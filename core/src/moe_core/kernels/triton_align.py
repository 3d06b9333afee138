"""Triton kernels of :mod:`.align`: top-k slots -> rows grouped per local expert.

Two kernels at most: ``count_chunks`` histograms each chunk of ``C`` slots per expert
(only when there is more than one chunk), then ``place`` gives every slot its row (stable:
token order within an expert, from the chunk prefix plus a one-hot cumsum inside the chunk)
and, in the padded layout, fills the padding rows and the block -> expert map. No loop
depends on runtime values (the interpreter's scalars cannot bound a ``range``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def count_chunks(ids_ptr, chunk_counts_ptr, n, first, E, C: tl.constexpr, EP: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid * C + tl.arange(0, C)
    in_n = idx < n
    local = (tl.load(ids_ptr + idx, mask=in_n, other=0) - first).to(tl.int32)
    mine = in_n & (local >= 0) & (local < E)
    e = tl.arange(0, EP)
    onehot = ((local[:, None] == e[None, :]) & mine[:, None]).to(tl.int32)
    tl.store(chunk_counts_ptr + pid * EP + e, tl.sum(onehot, axis=0))


@triton.jit
def place(ids_ptr, chunk_counts_ptr, slot_rows_ptr, sorted_ptr, block_expert_ptr, counts_ptr,
          used_ptr, n, first, E, block, cap, num_chunks, max_m,
          C: tl.constexpr, EP: tl.constexpr, NCB: tl.constexpr, NCT: tl.constexpr,
          R: tl.constexpr, MULTI: tl.constexpr, MASKED: tl.constexpr):
    pid = tl.program_id(0)
    e = tl.arange(0, EP)
    e_ok = e < E
    # -- this program's chunk of slots (none past the last chunk) --
    idx = pid * C + tl.arange(0, C)
    in_n = idx < n
    local = (tl.load(ids_ptr + idx, mask=in_n, other=0) - first).to(tl.int32)
    mine = in_n & (local >= 0) & (local < E)
    onehot = ((local[:, None] == e[None, :]) & mine[:, None]).to(tl.int32)
    if MULTI:  # totals and the slots of earlier chunks, from count_chunks
        total = tl.zeros([EP], dtype=tl.int32)
        before = tl.zeros([EP], dtype=tl.int32)
        for t in tl.static_range(NCT):
            ch = t * NCB + tl.arange(0, NCB)
            cc = tl.load(chunk_counts_ptr + ch[:, None] * EP + e[None, :],
                         mask=(ch < num_chunks)[:, None], other=0)
            total += tl.sum(cc, axis=0)
            before += tl.sum(tl.where((ch < pid)[:, None], cc, 0), axis=0)
    else:  # one chunk (C >= n): every program reads it whole for the totals
        every = tl.arange(0, C)
        lo = (tl.load(ids_ptr + every, mask=every < n, other=0) - first).to(tl.int32)
        in_all = (every < n) & (lo >= 0) & (lo < E)
        total = tl.sum(((lo[:, None] == e[None, :]) & in_all[:, None]).to(tl.int32), axis=0)
        before = tl.zeros([EP], dtype=tl.int32)
    if MASKED:  # expert e owns rows e * max_m .. e * max_m + max_m - 1
        count = tl.minimum(total, max_m)
        start = e * max_m
        end = start + max_m
        padded = total  # unused
    else:
        count = total
        padded = (total + block - 1) // block * block
        end = tl.cumsum(padded, axis=0)
        start = end - padded
    rank = tl.sum(onehot * (tl.cumsum(onehot, axis=0) - 1 + before[None, :]), axis=1)
    row = tl.sum(onehot * start[None, :], axis=1) + rank
    keep = mine
    if MASKED:
        keep = keep & (rank < max_m)
    tl.store(slot_rows_ptr + idx, tl.where(keep, row, -1), mask=in_n)
    tl.store(counts_ptr + e, count, mask=e_ok & (pid == 0))
    if not MASKED:
        tl.store(sorted_ptr + row, idx, mask=keep)
        used = tl.sum(padded, axis=0)
        tl.store(used_ptr, used, mask=pid == 0)
        # -- this program's tile of rows: padding rows hold n; each block's first row
        # writes the block's expert --
        r = pid * R + tl.arange(0, R)
        in_cap = r < cap
        ends = tl.where(e_ok, end, cap + 1)
        e_r = tl.sum((ends[None, :] <= r[:, None]).to(tl.int32), axis=1)
        of_r = (e_r[:, None] == e[None, :]) & e_ok[None, :]
        data_end = tl.sum(tl.where(of_r, (start + count)[None, :], 0), axis=1)
        tl.store(sorted_ptr + r, tl.zeros([R], dtype=tl.int32) + n, mask=in_cap & (r >= data_end))
        tl.store(block_expert_ptr + r // block, tl.where(r < used, e_r, -1),
                 mask=in_cap & (r % block == 0))
