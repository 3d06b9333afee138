"""FP4 (e2m1) with block scales: NVFP4 (16-blocks, e4m3 scale, fp32 global) and MXFP4
(32-blocks, e8m0 power-of-two scale). Values are packed two per byte, element ``2j`` in
the low nibble; a code is ``sign << 3 | magnitude index`` into :data:`E2M1_VALUES`.
Rounding is to nearest, ties to the even code, saturating at 6.
"""

from __future__ import annotations

import torch

from ..sizes import cdiv

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
NVFP4_GROUP, MXFP4_GROUP = 16, 32
E4M3_MAX = 448.0
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)



def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round fp values (already divided by their scale) to e2m1 codes (uint8, 0..15)."""
    mags = x.abs().float().clamp(max=E2M1_MAX)
    mids = torch.tensor(_MIDPOINTS, device=x.device)
    idx = torch.bucketize(mags, mids, right=True)  # ties round up ...
    tie = mags == mids[(idx - 1).clamp(min=0)]
    idx = idx - (tie & (idx % 2 == 1) & (idx > 0)).to(idx.dtype)  # ... unless that code is odd
    sign = (x < 0) & (idx > 0)
    return (idx | (sign.to(idx.dtype) << 3)).to(torch.uint8)


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=dtype, device=codes.device)
    return table[codes.long()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes -> [..., ceil(K/2)] bytes."""
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, k: int) -> torch.Tensor:
    """[..., ceil(K/2)] bytes -> [..., K] codes."""
    out = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)
    return out[..., :k]


def _blocks(x: torch.Tensor, group: int) -> torch.Tensor:
    """[..., K] -> [..., ceil(K/group), group], zero-padded."""
    k = x.shape[-1]
    padded = torch.nn.functional.pad(x.float(), (0, cdiv(k, group) * group - k))
    return padded.reshape(*x.shape[:-1], -1, group)


def quantize_nvfp4(x: torch.Tensor, global_scale: torch.Tensor | None = None):
    """NVFP4-quantize the last dim of ``x`` (shape ``[..., N, K]``).

    :param global_scale: fp32 of shape ``x.shape[:-2]``; by default ``amax / (448 * 6)``
        over the last two dims, so the largest block scale lands at e4m3's maximum.
    :return: ``(packed uint8 [..., N, ceil(K/2)], scale e4m3fn [..., N, ceil(K/16)],
        global_scale fp32 [...])``; ``x ~= e2m1 * scale * global_scale``.
    """
    k = x.shape[-1]
    if global_scale is None:
        amax = x.float().abs().amax(dim=(-2, -1))
        global_scale = torch.where(amax > 0, amax / (E4M3_MAX * E2M1_MAX), torch.ones_like(amax))
    g = global_scale.float()[..., None, None, None]
    blocks = _blocks(x, NVFP4_GROUP)
    scale = (blocks.abs().amax(dim=-1, keepdim=True) / E2M1_MAX / g).clamp(max=E4M3_MAX)
    scale = scale.to(torch.float8_e4m3fn)
    denom = scale.float() * g
    scaled = torch.where(denom > 0, blocks / denom, torch.zeros_like(blocks))
    codes = e2m1_encode(scaled).flatten(-2)[..., :k]
    return pack_nibbles(codes), scale.squeeze(-1), global_scale.float()


def dequantize_nvfp4(packed: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor, k: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    vals = _blocks(e2m1_decode(unpack_nibbles(packed, k), dtype), NVFP4_GROUP).to(dtype)
    s = scale.to(dtype)[..., None] * global_scale.to(dtype)[..., None, None, None]
    return (vals * s).flatten(-2)[..., :k]


def quantize_mxfp4(x: torch.Tensor):
    """MXFP4-quantize the last dim: ``(packed uint8 [..., ceil(K/2)], e8m0 uint8 [..., ceil(K/32)])``.

    The shared exponent is ``ceil(log2(block amax / 6))``: the smallest power of two that
    keeps the block's largest value representable, so nothing saturates (OCP's
    ``floor(log2(amax)) - 2`` can clip the block max by up to 25%). Stored with bias 127.
    """
    k = x.shape[-1]
    blocks = _blocks(x, MXFP4_GROUP)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    exp = torch.where(amax > 0, torch.ceil(torch.log2(amax.clamp(min=2.0**-126) / E2M1_MAX)),
                      torch.full_like(amax, -127.0)).clamp(-127, 127)
    codes = e2m1_encode(blocks / torch.exp2(exp)).flatten(-2)[..., :k]
    return pack_nibbles(codes), (exp.squeeze(-1) + 127).to(torch.uint8)


def dequantize_mxfp4(packed: torch.Tensor, scale: torch.Tensor, k: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    vals = _blocks(e2m1_decode(unpack_nibbles(packed, k), dtype), MXFP4_GROUP).to(dtype)
    s = torch.exp2(scale.to(dtype) - 127)[..., None]
    return (vals * s).flatten(-2)[..., :k]
