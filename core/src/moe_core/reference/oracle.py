"""An independent float64 computation of a layer, for tests and ``moe run``.

Dense masks instead of sorting and offsets, float64 throughout, per local expert.
"""

from __future__ import annotations

import torch

from ..activations import apply_activation
from ..quant import dequantize_weights, fake_quantize_activation
from ..spec import MoESpec
from ..weights import MoEWeights


def float64_layer(spec: MoESpec, weights: MoEWeights, x: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, *, quantize_activations: bool = True) -> torch.Tensor:
    """``[T, H]`` float64 output of ``spec``'s layer on canonical ``weights``.

    With ``quantize_activations`` the activations are fake-quantized as the format
    defines (per expert, like the kernels); without, only the weights are quantized,
    which is what a format's tolerance is measured against.
    """
    x64 = x.double()
    out = torch.zeros_like(x64)
    for e in range(spec.local_experts):
        hit = topk_ids == spec.first_expert + e  # [T, k]; at most one hit per token
        rows = hit.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        gate_w = (topk_weights.double() * hit).sum(dim=1)[rows]
        w13, w2 = dequantize_weights(spec, weights, slice(e, e + 1), torch.float64)
        xe = x64[rows]
        if quantize_activations:
            xe = fake_quantize_activation(spec.quant, xe)
        h = xe @ w13[0].T
        if weights.w13_bias is not None:
            h = h + weights.w13_bias[e].double()
        a = apply_activation(spec, h)
        if quantize_activations:
            a = fake_quantize_activation(spec.quant, a)
        y = a @ w2[0].T
        if weights.w2_bias is not None and spec.moe_tp_rank == 0:
            y = y + weights.w2_bias[e].double()
        out[rows] += gate_w[:, None] * y
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (0 when both are zero)."""
    diff = (out.double() - ref.double()).norm()
    denom = ref.double().norm()
    return float(diff / denom) if denom > 0 else float(diff)
