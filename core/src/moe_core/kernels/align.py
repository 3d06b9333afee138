"""Routing -> rows grouped by local expert: padded to a block, or one fixed stride each.

:func:`align_by_expert` builds the layout every grouped-GEMM kernel reads (vLLM's
``moe_align_block_size``, DeepGEMM's contiguous layout with ``block`` = its M alignment):
slots (``t * k + s``) sorted by expert, each expert's run padded to a multiple of
``block``. :func:`align_masked` places expert ``e``'s slots at rows ``e * max_m + rank``
(DeepGEMM's masked layout). Both run without host synchronisation and with a capacity
fixed by ``T * k``, so they can be captured in a CUDA graph: on CUDA as one or two Triton
kernels (:mod:`.triton_align`), elsewhere as a handful of torch ops (same results).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import on_triton, pow2


class AlignedRoutes(NamedTuple):
    """Where each routed slot goes; all int32, on the routing's device."""

    #: ``[capacity]`` flattened slot ``t * k + s`` of each row, grouped by local expert,
    #: each expert padded to a multiple of ``block``; padding rows hold ``T * k``.
    sorted_slots: torch.Tensor
    #: ``[capacity // block]`` local expert of each block; -1 past the last used block.
    block_expert: torch.Tensor
    #: ``[1]`` padded rows in use (blocks with an expert times ``block``).
    rows_used: torch.Tensor
    #: ``[num_local]`` slots routed to each local expert.
    counts: torch.Tensor
    #: ``[T * k]`` row of each slot in ``sorted_slots``; -1 where its expert is not local.
    slot_rows: torch.Tensor


class MaskedRoutes(NamedTuple):
    """Where each routed slot goes in a ``[num_local, max_m]`` buffer; int32."""

    #: ``[T * k]`` row ``e * max_m + rank`` of each slot (rank: its place among expert
    #: ``e``'s slots, in token order); -1 where the expert is not local.
    slot_rows: torch.Tensor
    #: ``[num_local]`` rows in use per local expert.
    masked_m: torch.Tensor


def capacity(num_slots: int, num_local: int, block: int) -> int:
    """Rows an alignment of ``num_slots`` slots over ``num_local`` experts may need."""
    return -(-(num_slots + num_local * (block - 1)) // block) * block


def _check(num_local: int, **sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if v < 1}
    if num_local < 1 or bad:
        raise ValueError(f"num_local and {', '.join(sizes)} must be >= 1; got "
                         f"num_local={num_local}, " + ", ".join(f"{k}={v}" for k, v in sizes.items()))


def align_by_expert(topk_ids: torch.Tensor, first_expert: int, num_local: int,
                    block: int) -> AlignedRoutes:
    """Group the top-k slots of ``topk_ids [T, k]`` (global expert ids) routed to experts
    ``first_expert .. first_expert + num_local - 1`` by local expert, padded to ``block``.

    Slots within an expert keep token order. Ids outside this rank's range are skipped.
    """
    _check(num_local, block=block)
    impl = align_triton if on_triton(topk_ids) else align_torch
    return impl(topk_ids, first_expert, num_local, block)


def align_masked(topk_ids: torch.Tensor, first_expert: int, num_local: int,
                 max_m: int) -> MaskedRoutes:
    """Place the top-k slots routed to this rank's experts at ``e * max_m + rank``.

    A top-k names an expert at most once per token, so ``max_m >= T`` holds every slot;
    were an expert given more than ``max_m`` slots, those past ``max_m`` would get row -1
    and ``masked_m`` would stop at ``max_m``.
    """
    _check(num_local, max_m=max_m)
    if on_triton(topk_ids):
        return _launch(topk_ids, first_expert, num_local, 1, max_m)
    routes = align_torch(topk_ids, first_expert, num_local, 1)
    counts = routes.counts.to(torch.int64)
    start = counts.cumsum(0) - counts
    local = (topk_ids.reshape(-1).to(torch.int64) - first_expert).clamp(0, num_local - 1)
    rank = routes.slot_rows.to(torch.int64) - start.index_select(0, local)
    keep = (routes.slot_rows >= 0) & (rank < max_m)
    rows = torch.where(keep, local * max_m + rank, -1).to(torch.int32)
    return MaskedRoutes(rows, counts.clamp(max=max_m).to(torch.int32))


def align_torch(topk_ids: torch.Tensor, first_expert: int, num_local: int, block: int) -> AlignedRoutes:
    """:func:`align_by_expert` in torch ops (any device)."""
    dev = topk_ids.device
    n = topk_ids.numel()
    cap = capacity(n, num_local, block)
    local = topk_ids.reshape(-1).to(torch.int64) - first_expert
    # Not-local slots sort last under the key num_local and are dropped below.
    key = torch.where((local >= 0) & (local < num_local), local, num_local)
    order = torch.argsort(key, stable=True)
    sorted_key = key.index_select(0, order)
    counts = torch.zeros(num_local + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, key, torch.ones_like(key))
    counts = counts[:num_local]
    padded = (counts + block - 1) // block * block
    padded_start = padded.cumsum(0) - padded
    start = counts.cumsum(0) - counts
    is_local = sorted_key < num_local
    e = sorted_key.clamp(max=num_local - 1)
    rank = torch.arange(n, device=dev) - start.index_select(0, e)
    # Rows of the not-local slots land in one spare row past the capacity, then cut off.
    row = torch.where(is_local, padded_start.index_select(0, e) + rank, cap)
    sorted_slots = torch.full((cap + 1,), n, dtype=torch.int32, device=dev)
    sorted_slots.scatter_(0, row, order.to(torch.int32))
    slot_rows = torch.empty(n, dtype=torch.int32, device=dev)
    slot_rows.scatter_(0, order, torch.where(is_local, row, -1).to(torch.int32))
    used = padded.sum().reshape(1)
    block_start = torch.arange(0, cap, block, device=dev)
    padded_end = padded_start + padded
    block_expert = torch.searchsorted(padded_end, block_start, right=True)
    block_expert = torch.where(block_start < used, block_expert, -1)
    return AlignedRoutes(sorted_slots[:cap], block_expert.to(torch.int32), used.to(torch.int32),
                         counts.to(torch.int32), slot_rows)


def align_triton(topk_ids: torch.Tensor, first_expert: int, num_local: int, block: int) -> AlignedRoutes:
    """:func:`align_by_expert` in one or two Triton kernels (CUDA, or the interpreter)."""
    return _launch(topk_ids, first_expert, num_local, block, None)


#: Elements of the ``[slots or rows, experts]`` one-hot tiles each program holds.
_TILE_ELEMS = 8192


def _launch(topk_ids, first: int, E: int, block: int, max_m: int | None):
    from . import triton_align as k

    ids = topk_ids.reshape(-1).contiguous()
    dev, n = ids.device, ids.numel()
    masked = max_m is not None
    cap = E * max_m if masked else capacity(n, E, block)
    EP = pow2(E)
    C = max(16, min(pow2(n), _TILE_ELEMS // EP))
    R = max(16, min(1024, _TILE_ELEMS // EP))
    chunks = max(1, -(-n // C))
    NCB = max(16, min(pow2(chunks), _TILE_ELEMS // EP))
    i32 = dict(dtype=torch.int32, device=dev)
    slot_rows = torch.empty(n, **i32)
    counts = torch.empty(E, **i32)
    sorted_slots = block_expert = used = slot_rows  # placeholders: unused when masked
    if not masked:
        sorted_slots, block_expert, used = (torch.empty(cap, **i32),
                                            torch.empty(cap // block, **i32), torch.empty(1, **i32))
    chunk_counts = torch.empty(chunks * EP if chunks > 1 else 1, **i32)
    if chunks > 1:
        k.count_chunks[(chunks,)](ids, chunk_counts, n, first, E, C=C, EP=EP)
    grid = chunks if masked else max(chunks, -(-cap // R))
    k.place[(grid,)](ids, chunk_counts, slot_rows, sorted_slots, block_expert, counts, used,
                     n, first, E, block, cap, chunks, max_m or 0, C=C, EP=EP, NCB=NCB,
                     NCT=-(-chunks // NCB), R=R, MULTI=chunks > 1, MASKED=masked)
    if masked:
        return MaskedRoutes(slot_rows, counts)
    return AlignedRoutes(sorted_slots, block_expert, used, counts, slot_rows)
