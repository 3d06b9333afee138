"""DeepGEMM's weight layout: K-major w13 [E, 2I, H] and w2 [E, H, I] (the canonical one), with
fp32 128x128 block scales that SM90 reads as they are (checked, never re-laid out)."""

from __future__ import annotations

from moe_core.spec import Quant

LAYOUT = "deepgemm"


def prepare(plan, weights):
    """New :class:`MoEWeights` in DeepGEMM's layout; the caller's tensors are not touched."""
    tensors = {"w13": weights.w13.contiguous(), "w2": weights.w2.contiguous()}
    if plan.spec.quant is Quant.FP8_BLOCK128:
        tensors.update(w13_scale=weights.w13_scale.contiguous(), w2_scale=weights.w2_scale.contiguous())
    return weights.replace(layout=f"{LAYOUT}/sm{plan.spec.sm}", **tensors)
