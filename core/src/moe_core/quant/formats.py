"""Reference quantize / dequantize for every format a spec names, in the canonical layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import MoESpec, Quant
from ..weights import MoEWeights
from .fp4 import dequantize_mxfp4, dequantize_nvfp4, quantize_mxfp4, quantize_nvfp4
from .fp8 import ACT_GROUP, dequantize_fp8_blockwise, quantize_fp8_blockwise


@dataclass(frozen=True)
class FormatInfo:
    weights: str
    activations: str
    #: Relative Frobenius error allowed between a backend and a float64 computation on
    #: the same (dequantized) weights with unquantized activations.
    tolerance: float


FORMATS: dict[Quant, FormatInfo] = {
    Quant.BF16: FormatInfo("bf16", "bf16", 1e-2),
    Quant.FP8_BLOCK128: FormatInfo("e4m3, fp32 scale per 128x128 block",
                                   "e4m3, dynamic scale per 1x128 token group", 6e-2),
    Quant.FP8_TENSOR: FormatInfo("e4m3, fp32 scale per expert matrix",
                                 "e4m3, dynamic scale per tensor", 6e-2),
    Quant.FP8_CHANNEL: FormatInfo("e4m3, fp32 scale per output channel",
                                  "e4m3, dynamic scale per token", 6e-2),
    Quant.NVFP4: FormatInfo("e2m1, e4m3 scale per 16, fp32 global scale per expert",
                            "e2m1, e4m3 scale per 16, dynamic fp32 global scale", 2.5e-1),
    Quant.MXFP4: FormatInfo("e2m1, e8m0 scale per 32", "bf16", 1e-2),
}


def tolerance(quant: Quant) -> float:
    return FORMATS[Quant(quant)].tolerance


def _quantize_matrix(quant: Quant, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Quantize ``[E, N, K]`` -> {q, scale[, global_scale]} (scales per expert matrix/row/block)."""
    if quant is Quant.FP8_BLOCK128:
        q, s = quantize_fp8_blockwise(w, 128, 128)
    elif quant is Quant.FP8_TENSOR:
        q, s = quantize_fp8_blockwise(w, None, None)
        s = s.reshape(w.shape[0])
    elif quant is Quant.FP8_CHANNEL:
        q, s = quantize_fp8_blockwise(w, 1, None)
        s = s.squeeze(-1)
    elif quant is Quant.NVFP4:
        q, s, g = quantize_nvfp4(w)
        return {"q": q, "scale": s, "global_scale": g}
    elif quant is Quant.MXFP4:
        q, s = quantize_mxfp4(w)
    else:
        return {"q": w.to(torch.bfloat16)}
    return {"q": q, "scale": s}


def quantize_weights(spec: MoESpec, w13: torch.Tensor, w2: torch.Tensor,
                     w13_bias: torch.Tensor | None = None,
                     w2_bias: torch.Tensor | None = None) -> MoEWeights:
    """Canonical :class:`MoEWeights` for ``spec`` from float ``w13 [E,R,H]`` / ``w2 [E,H,I]``.

    Only 128x128 blocks see the gate/up split (each half is blocked from its own row 0);
    every other scale is per row or per expert matrix, shared by both halves.
    """
    q = spec.quant
    if q is Quant.FP8_BLOCK128 and spec.activation.gated:
        parts = [_quantize_matrix(q, h) for h in w13.chunk(2, dim=-2)]
        top = {k: torch.cat([p[k] for p in parts], -2) for k in parts[0]}
    else:
        top = _quantize_matrix(q, w13)
    down = _quantize_matrix(q, w2)
    bias = {}
    if spec.has_bias:
        bias = {"w13_bias": w13_bias.float(), "w2_bias": w2_bias.float()}
    return MoEWeights(
        w13=top["q"], w2=down["q"], w13_scale=top.get("scale"), w2_scale=down.get("scale"),
        w13_global_scale=top.get("global_scale"), w2_global_scale=down.get("global_scale"), **bias)


def _dequantize_matrix(quant: Quant, q, scale, global_scale, k: int, dtype) -> torch.Tensor:
    if quant is Quant.BF16:
        return q.to(dtype)
    if quant is Quant.FP8_BLOCK128:
        return dequantize_fp8_blockwise(q, scale, 128, 128, dtype)
    if quant is Quant.FP8_TENSOR:
        return q.to(dtype) * scale.to(dtype)[..., None, None]
    if quant is Quant.FP8_CHANNEL:
        return q.to(dtype) * scale.to(dtype)[..., None]
    if quant is Quant.NVFP4:
        return dequantize_nvfp4(q, scale, global_scale, k, dtype)
    return dequantize_mxfp4(q, scale, k, dtype)


def dequantize_weights(spec: MoESpec, weights: MoEWeights, experts=slice(None),
                       dtype: torch.dtype = torch.float32, intermediate: int | None = None):
    """Float ``(w13 [e,R,H], w2 [e,H,I])`` of canonical weights for the selected experts.

    ``intermediate`` is the per-partition size the weights actually have (padded layouts).
    """
    q, H = spec.quant, spec.hidden_size
    I = intermediate or spec.intermediate_per_partition
    sel = (lambda t: None if t is None else t[experts])
    w13q, w13s, w13g = sel(weights.w13), sel(weights.w13_scale), sel(weights.w13_global_scale)
    if q is Quant.FP8_BLOCK128 and spec.activation.gated:
        halves = zip(w13q.chunk(2, -2), w13s.chunk(2, -2))
        w13 = torch.cat([_dequantize_matrix(q, a, s, None, H, dtype) for a, s in halves], -2)
    else:
        w13 = _dequantize_matrix(q, w13q, w13s, w13g, H, dtype)
    w2 = _dequantize_matrix(q, sel(weights.w2), sel(weights.w2_scale), sel(weights.w2_global_scale),
                            I, dtype)
    return w13, w2


def fake_quantize_activation(quant: Quant, x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize activations ``[T, K]`` as the format's kernels would see them.

    Dynamic scales are computed over the rows given (one expert's tokens), in ``x.dtype``.
    """
    dt = x.dtype
    if quant is Quant.FP8_BLOCK128:
        q, s = quantize_fp8_blockwise(x, 1, ACT_GROUP)
        return dequantize_fp8_blockwise(q, s, 1, ACT_GROUP, dt)
    if quant is Quant.FP8_CHANNEL:
        q, s = quantize_fp8_blockwise(x, 1, None)
        return dequantize_fp8_blockwise(q, s, 1, None, dt)
    if quant is Quant.FP8_TENSOR:
        q, s = quantize_fp8_blockwise(x, None, None)
        return dequantize_fp8_blockwise(q, s, None, None, dt)
    if quant is Quant.NVFP4:
        packed, s, g = quantize_nvfp4(x)
        return dequantize_nvfp4(packed, s, g, x.shape[-1], dt)
    return x
