"""The weighted combine of expert outputs back to tokens, as a dispatcher's local step.

``pos[t, s]`` is the row of the expert output ``y`` holding token ``t``'s top-k slot ``s``
(-1: that expert lives on another rank). On CUDA one Triton kernel reads each needed row
of ``y`` once and writes bf16 sums accumulated in fp32; elsewhere the same in PyTorch.
(:func:`moe_core.runner.combine` is the fp32 form runners use on their own tokens.)
"""

from __future__ import annotations

import torch

from . import on_triton

_REDUCE_BLOCK_H = 1024
_reduce_kernel = None


def slot_positions(n: int, k: int, pairs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``[n, k]`` int32: ``rows[i]`` at flattened slot ``pairs[i]``, -1 elsewhere."""
    pos = torch.full((n * k,), -1, dtype=torch.int32, device=pairs.device)
    pos[pairs] = rows.to(torch.int32)
    return pos.view(n, k)


def _triton_kernel():
    global _reduce_kernel
    if _reduce_kernel is None:
        import triton
        import triton.language as tl

        @triton.jit
        def weighted_reduce_kernel(y_ptr, pos_ptr, w_ptr, out_ptr, H, K: tl.constexpr,
                                   BH: tl.constexpr):
            row = tl.program_id(0)
            cols = tl.program_id(1) * BH + tl.arange(0, BH)
            in_h = cols < H
            acc = tl.zeros([BH], dtype=tl.float32)
            for s in tl.static_range(K):
                p = tl.load(pos_ptr + row * K + s)
                wt = tl.load(w_ptr + row * K + s)
                v = tl.load(y_ptr + p.to(tl.int64) * H + cols, mask=in_h & (p >= 0), other=0.0)
                acc += v.to(tl.float32) * tl.where(p >= 0, wt, 0.0)
            tl.store(out_ptr + row.to(tl.int64) * H + cols, acc.to(tl.bfloat16), mask=in_h)

        _reduce_kernel = (triton.cdiv, weighted_reduce_kernel)
    return _reduce_kernel


def weighted_reduce(y: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``y [P, H]``, ``pos [n, k]``, ``weights [n, k]`` -> ``[n, H]`` bf16."""
    n, k = pos.shape
    H = y.shape[-1]
    if on_triton(y):
        cdiv, kernel = _triton_kernel()
        out = torch.empty(n, H, dtype=torch.bfloat16, device=y.device)
        if n:
            kernel[(n, cdiv(H, _REDUCE_BLOCK_H))](y.contiguous(), pos.contiguous(),
                                          weights.float().contiguous(), out, H, K=k, BH=_REDUCE_BLOCK_H)
        return out
    valid = pos >= 0
    if not n or not y.shape[0]:
        return torch.zeros(n, H, dtype=torch.bfloat16, device=y.device)
    gathered = y.index_select(0, pos.clamp(min=0).reshape(-1).long()).view(n, k, H).float()
    # rows nobody wrote (a masked layout's tail) may hold NaN: never multiply them in
    gathered = torch.where(valid[..., None], gathered, 0.0)
    return torch.einsum("nk,nkh->nh", weights.float(), gathered).to(torch.bfloat16)
