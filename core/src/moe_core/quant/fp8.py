"""FP8 (e4m3fn) block quantization: one fp32 scale per (bn x bk) block, ``x = q * scale``.

One function covers every FP8 granularity the formats use: 128x128 weight blocks,
1x128 activation groups, per-row (channel / token) and per-matrix (tensor) scales.
"""

from __future__ import annotations

import torch

from ..sizes import cdiv

FP8_MAX = 448.0  # largest finite e4m3fn value
#: Activation quantization group of the FP8 formats (1 x 128: DeepGEMM's, DeepEP's).
ACT_GROUP = 128
#: Least amax a scale is computed from (an all-zero block gets scale 1e-12 / 448, not 0).
SCALE_FLOOR = 1e-12


def quantize_fp8_blockwise(x: torch.Tensor, bn: int | None, bk: int | None, *, ue8m0: bool = False):
    """Quantize the last two dims of ``x`` in blocks of ``bn x bk`` (None: the whole dim).

    ``ue8m0`` rounds each scale up to a power of two (what UE8M0 scale storage can hold).
    The Triton kernels spell the same arithmetic once, in :mod:`moe_core.kernels.triton_fp8`.

    :return: ``(q, scale)``: ``q`` e4m3fn shaped like ``x``; ``scale`` fp32 of shape
        ``[..., ceil(N/bn), ceil(K/bk)]``. Ragged edge blocks are scaled by their own amax.
    """
    *lead, N, K = x.shape
    bn, bk = bn or N, bk or K
    nb, kb = cdiv(N, bn), cdiv(K, bk)
    xf = x.float()
    padded = torch.nn.functional.pad(xf, (0, kb * bk - K, 0, nb * bn - N))
    blocks = padded.reshape(*lead, nb, bn, kb, bk)
    amax = blocks.abs().amax(dim=(-3, -1))
    scale = amax.clamp(min=SCALE_FLOOR) / FP8_MAX
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    q = (blocks / scale[..., :, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    q = q.reshape(*lead, nb * bn, kb * bk)[..., :N, :K].to(torch.float8_e4m3fn)
    return q, scale


def dequantize_fp8_blockwise(q: torch.Tensor, scale: torch.Tensor, bn: int | None, bk: int | None,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8_blockwise` (exact up to ``dtype`` rounding)."""
    *_, N, K = q.shape
    bn, bk = bn or N, bk or K
    s = scale.to(dtype).repeat_interleave(bn, dim=-2).repeat_interleave(bk, dim=-1)
    return q.to(dtype) * s[..., :N, :K]
