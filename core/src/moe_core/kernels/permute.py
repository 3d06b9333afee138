"""Standard-layout tokens -> a grouped runner's layout, and the combine back.

:func:`permute_contiguous` builds DeepGEMM's contiguous layout (rows grouped per local
expert, each expert padded to the M alignment, ``m_indices`` naming each row's expert,
-1 on rows to skip); :func:`permute_masked` its masked layout (``[E, max_m, H]`` with
``masked_m`` rows per expert). With ``fp8`` the rows are quantized per 1x128 group in the
same pass (scales MN-major, as DeepGEMM reads them). On CUDA each is the alignment's one or
two kernels plus one gather kernel (:mod:`.triton_permute`), no host synchronisation,
every shape fixed by ``T``; elsewhere torch ops giving the same layout.

Both return ``slot_rows`` (the row of the runner's output holding each top-k slot):
:func:`unpermute` hands it to :func:`.combine.weighted_reduce`.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch

from . import interpreting, on_triton
from .align import AlignedRoutes, align_by_expert, align_masked
from .combine import weighted_reduce
from .group_quant import GROUP, quantize_groups

#: bf16 rows: an ``[M, 2I]``-sized tile; fp8: one 1x128 group per program.
_BM, _BH = 32, 256
_BS = 16

#: bf16 rows, or FP8 ``(e4m3 values, fp32 scales seen [..., rows, groups], MN-major)``.
Rows = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


class ContiguousRows(NamedTuple):
    #: ``[capacity, H]``: rows per local expert, each expert padded to ``align`` (zero
    #: padding rows); rows of unused blocks past ``routes.rows_used`` are unspecified.
    rows: Rows
    #: ``[capacity]`` int32 local expert of each row, -1 on padding and unused rows.
    m_indices: torch.Tensor
    routes: AlignedRoutes

    @property
    def slot_rows(self) -> torch.Tensor:
        return self.routes.slot_rows


class MaskedRows(NamedTuple):
    #: ``[E, max_m, H]``; rows past ``masked_m[e]`` are unspecified.
    rows: Rows
    #: ``[E]`` int32 rows in use per local expert.
    masked_m: torch.Tensor
    #: ``[T * k]`` int32 row ``e * max_m + rank`` of each slot, -1 where not local.
    slot_rows: torch.Tensor


def _check(x: torch.Tensor, topk_ids: torch.Tensor, fp8: bool) -> None:
    if x.dim() != 2 or topk_ids.dim() != 2 or x.shape[0] != topk_ids.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and topk_ids {tuple(topk_ids.shape)}: expected "
                         "[T, H] and [T, k]")
    if fp8 and x.shape[1] % GROUP:
        raise ValueError(f"FP8 rows are quantized in groups of {GROUP}: hidden {x.shape[1]} is not a multiple")


def permute_contiguous(x: torch.Tensor, topk_ids: torch.Tensor, first_expert: int, num_local: int,
                       align: int, *, fp8: bool) -> ContiguousRows:
    """``x [T, H]`` and global ``topk_ids [T, k]`` -> the contiguous layout with ``align``-row
    padding per expert (capacity fixed by ``T * k``: :func:`.align.capacity`)."""
    _check(x, topk_ids, fp8)
    routes = align_by_expert(topk_ids, first_expert, num_local, align)
    n, H = topk_ids.numel(), x.shape[1]
    k = topk_ids.shape[1]
    cap = routes.sorted_slots.numel()
    if on_triton(x):
        from . import triton_permute as kern

        x = x.contiguous()
        m_indices = torch.empty(cap, dtype=torch.int32, device=x.device)
        if fp8:
            q = torch.empty(cap, H, dtype=torch.float8_e4m3fn, device=x.device)
            s = torch.empty(H // GROUP, cap, dtype=torch.float32, device=x.device)
            out, rows, BH = q, (q, s.t()), GROUP
        else:
            out = s = torch.empty(cap, H, dtype=x.dtype, device=x.device)
            rows, BH = out, _BH
        kern.gather_contiguous[(-(-cap // _BM), -(-H // BH))](
            x, routes.sorted_slots, routes.block_expert, m_indices, out, s, n, k, H, cap, align,
            BM=_BM, BH=BH, FP8=fp8, INTERPRETED=interpreting())
        return ContiguousRows(rows, m_indices, routes)
    slots = routes.sorted_slots.to(torch.int64)
    valid = slots < n
    expert = routes.block_expert.repeat_interleave(align)
    m_indices = torch.where(valid, expert, -1).to(torch.int32)
    # Padding rows read a zero row appended to x (which may have no rows at all).
    src = torch.where(valid, slots // k, x.shape[0])
    padded = torch.cat([x, x.new_zeros(1, H)])
    rows = quantize_groups(padded, src) if fp8 else padded.index_select(0, src)
    return ContiguousRows(rows, m_indices, routes)


def permute_masked(x: torch.Tensor, topk_ids: torch.Tensor, first_expert: int, num_local: int,
                   max_m: int, *, fp8: bool) -> MaskedRows:
    """``x [T, H]`` and global ``topk_ids [T, k]`` -> ``[num_local, max_m, H]`` rows and
    ``masked_m`` (``max_m >= T`` holds every slot: see :func:`.align.align_masked`)."""
    _check(x, topk_ids, fp8)
    routes = align_masked(topk_ids, first_expert, num_local, max_m)
    n, H = topk_ids.numel(), x.shape[1]
    k = topk_ids.shape[1]
    E, dev = num_local, x.device
    if on_triton(x):
        from . import triton_permute as kern

        x = x.contiguous()
        G = H // GROUP
        if fp8:
            q = torch.empty(E, max_m, H, dtype=torch.float8_e4m3fn, device=dev)
            s = torch.empty(E, G, max_m, dtype=torch.float32, device=dev)
            out, rows, BH = q, (q, s.transpose(-1, -2)), GROUP
        else:
            out = s = torch.empty(E, max_m, H, dtype=x.dtype, device=dev)
            rows, BH = out, _BH
        if n:
            kern.scatter_masked[(-(-n // _BS), -(-H // BH))](
                x, routes.slot_rows, out, s, n, k, H, max_m, G, BS=_BS, BH=BH, FP8=fp8,
                INTERPRETED=interpreting())
        return MaskedRows(rows, routes.masked_m, routes.slot_rows)
    # One spare row past the buffer takes the slots of other ranks' experts.
    slot_rows = routes.slot_rows.to(torch.int64)
    at = torch.where(slot_rows >= 0, slot_rows, E * max_m)
    tokens = torch.arange(n, device=dev) // k
    buf = x.new_zeros(E * max_m + 1, H).index_copy_(0, at, x[tokens])
    buf = buf[:-1].view(E, max_m, H)
    rows = quantize_groups(buf, counts=routes.masked_m) if fp8 else buf
    return MaskedRows(rows, routes.masked_m, routes.slot_rows)


def unpermute(y: torch.Tensor, slot_rows: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """Runner outputs ``y`` (rows as the permute placed them, any leading shape) -> the
    ``[T, H]`` bf16 top-k weighted sums (partial: this rank's experts only)."""
    return weighted_reduce(y.reshape(-1, y.shape[-1]), slot_rows.view(topk_weights.shape), topk_weights)
