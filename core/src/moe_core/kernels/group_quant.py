"""Per-token-group (1x128) FP8 quantization of activations, optionally gathering rows.

One Triton kernel reads rows ``x[src[i]]`` (``src[i] < 0``: a zero padding row), so the
scatter into DeepGEMM's aligned contiguous layout and the quantization are one pass; it
writes fp32 scales MN-major (a ``[..., G, M]`` buffer seen as ``[..., M, G]``), the layout
DeepGEMM's SM90 kernels read without a re-layout. Needs K % 128 == 0. The quantization is
:mod:`.triton_fp8`'s (the arithmetic of :func:`moe_core.quant.fp8.quantize_fp8_blockwise`).
"""

from __future__ import annotations

import torch

from ..quant.fp8 import quantize_fp8_blockwise
from . import interpreting

GROUP, BLOCK_M = 128, 32
_compiled = None


def _kernel():
    import triton
    import triton.language as tl

    # Module globals, not locals: Triton's interpreter runs a kernel against its module's
    # globals (a closure's names are not seen), and this kernel is defined in a function.
    global fp8_grid_values, fp8_group_scales
    from .triton_fp8 import fp8_grid_values, fp8_group_scales

    @triton.jit
    def group_quant(x_ptr, src_ptr, cnt_ptr, q_ptr, s_ptr, M, K, rows_in,
                    HAS_SRC: tl.constexpr, HAS_CNT: tl.constexpr, BM: tl.constexpr,
                    GS: tl.constexpr, INTERPRETED: tl.constexpr):
        pid_m, g, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        G = K // GS
        rows = pid_m * BM + tl.arange(0, BM)
        cols = g * GS + tl.arange(0, GS)
        in_range = rows < M
        if HAS_CNT:  # masked layout: rows past this expert's count are left unwritten
            in_range = in_range & (rows < tl.load(cnt_ptr + batch))
        if HAS_SRC:
            src = tl.load(src_ptr + rows, mask=in_range, other=-1)
            valid = in_range & (src >= 0)
            src_row = tl.where(valid, src, 0).to(tl.int64)
        else:
            valid = in_range
            src_row = batch.to(tl.int64) * rows_in + rows.to(tl.int64)
        x = tl.load(x_ptr + src_row[:, None] * K + cols[None, :], mask=valid[:, None], other=0.0)
        x = x.to(tl.float32)
        scale = fp8_group_scales(x, AXIS=1, UE8M0=False)
        q = fp8_grid_values(x, scale, AXIS=1, INTERPRETED=INTERPRETED)
        out_row = batch.to(tl.int64) * M + rows.to(tl.int64)
        tl.store(q_ptr + out_row[:, None] * K + cols[None, :], q.to(tl.float8e4nv), mask=in_range[:, None])
        tl.store(s_ptr + batch.to(tl.int64) * G * M + g * M + rows, scale, mask=in_range)

    return group_quant


def quantize_groups(x: torch.Tensor, src: torch.Tensor | None = None, counts: torch.Tensor | None = None):
    """``x [N, K]`` (with ``src [M]`` row indices) or ``[E, M, K]`` -> ``(q e4m3, scales)``,
    shaped ``[M, K]``/``[M, G]`` or ``[E, M, K]``/``[E, M, G]``; scales MN-major. With
    ``counts [E]`` (int32, masked layout) only the first ``counts[e]`` rows are written."""
    global _compiled
    K = x.shape[-1]
    if K % GROUP:
        raise ValueError(f"per-token-group quant needs K % 128 == 0, got K={K}")
    if not x.is_cuda:  # CPU (tests with a stand-in deep_gemm): same result, same layout
        rows = x if src is None else torch.where(
            (src >= 0)[:, None], x.index_select(0, src.clamp(min=0)), x.new_zeros(()))
        q, s = quantize_fp8_blockwise(rows, 1, 128)
        return q, s.transpose(-1, -2).contiguous().transpose(-1, -2)
    if _compiled is None:
        _compiled = _kernel()
    x = x.contiguous()
    batched = src is None and x.dim() == 3
    E = x.shape[0] if batched else 1
    M = src.numel() if src is not None else x.shape[-2]
    q = torch.empty(E, M, K, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(E, K // GROUP, M, dtype=torch.float32, device=x.device)
    if M:
        grid = (-(-M // BLOCK_M), K // GROUP, E)
        _compiled[grid](x, src if src is not None else x, counts if counts is not None else x,
                        q, s, M, K, x.shape[-2], HAS_SRC=src is not None,
                        HAS_CNT=counts is not None, BM=BLOCK_M, GS=GROUP,
                        INTERPRETED=interpreting())
    s = s.transpose(-1, -2)
    return (q, s) if batched else (q[0], s[0])
