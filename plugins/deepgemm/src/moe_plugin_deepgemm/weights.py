"""DeepGEMM's weight layout: K-major w13 [E, 2I, H] and w2 [E, H, I] (the canonical one), fp32
128x128 block scales on SM90; power-of-two (UE8M0) scales on SM100, where DeepGEMM packs them."""

from __future__ import annotations

import torch

from moe_core.quant import dequantize_weights
from moe_core.quant.fp8 import FP8_MAX
from moe_core.spec import Quant

LAYOUT = "deepgemm"


def requantize_ue8m0(spec, weights):
    """Re-quantize fp8 block weights so every scale is a power of two (what SM100's UE8M0
    scales can hold): scale = 2**ceil(log2(block amax / 448)); values re-rounded to e4m3."""
    w13, w2 = dequantize_weights(spec, weights)
    out = {}
    for name, w in (("w13", w13), ("w2", w2)):
        *lead, n, k = w.shape
        blocks = w.reshape(*lead, n // 128, 128, k // 128, 128)
        amax = blocks.abs().amax(dim=(-3, -1)).clamp(min=1e-12)
        scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)))
        q = (blocks / scale[..., :, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
        out[name] = q.reshape(w.shape).to(torch.float8_e4m3fn)
        out[name + "_scale"] = scale.float()
    return out


def prepare(plan, weights):
    """New :class:`MoEWeights` in DeepGEMM's layout; the caller's tensors are not touched."""
    spec = plan.spec
    tensors = {"w13": weights.w13.contiguous(), "w2": weights.w2.contiguous()}
    if spec.quant is Quant.FP8_BLOCK128:
        if (spec.sm or 0) >= 100:
            tensors.update(requantize_ue8m0(spec, weights))
        else:
            tensors.update(w13_scale=weights.w13_scale.contiguous(), w2_scale=weights.w2_scale.contiguous())
    return weights.replace(layout=f"{LAYOUT}/sm{spec.sm}", **tensors)
