"""Routing -> rows grouped by local expert, each expert's rows padded to a block.

The layout every grouped-GEMM kernel reads (vLLM's ``moe_align_block_size``, DeepGEMM's
contiguous layout with ``block`` = its M alignment): slots (``t * k + s``) sorted by
expert, each expert's run padded to a multiple of ``block``. Built from a handful of torch
ops on the device, with no host synchronisation and a capacity fixed by ``T * k``, so it
can be captured in a CUDA graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


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


def capacity(num_slots: int, num_local: int, block: int) -> int:
    """Rows an alignment of ``num_slots`` slots over ``num_local`` experts may need."""
    return -(-(num_slots + num_local * (block - 1)) // block) * block


def align_by_expert(topk_ids: torch.Tensor, first_expert: int, num_local: int,
                    block: int) -> AlignedRoutes:
    """Group the top-k slots of ``topk_ids [T, k]`` (global expert ids) routed to experts
    ``first_expert .. first_expert + num_local - 1`` by local expert, padded to ``block``.

    Slots within an expert keep token order. Ids outside this rank's range are skipped.
    """
    if block < 1 or num_local < 1:
        raise ValueError(f"block and num_local must be >= 1; got block={block}, num_local={num_local}")
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
