"""Canonical NVFP4 weights -> each variant's layout, and back (the round trip is tested)."""

from __future__ import annotations

from moe_core.weights import MoEWeights

from .constraints import V1, V2
from .layouts import (deinterleave_halves, from_mma_view, interleave_halves, mma_view,
                      swizzle_scales, unswizzle_scales)

V1_LAYOUT, V2_LAYOUT = "cutedsl-v1", "cutedsl-v2"


def process(variant: str, w: MoEWeights) -> MoEWeights:
    """v1: [Gate, Up] w13, swizzled scales. v2: interleaved halves, scales in the MMA view."""
    w13, s13 = w.w13, w.w13_scale
    if variant == V2:
        w13, s13 = interleave_halves(w13), interleave_halves(s13)
    s13, s2 = swizzle_scales(s13), swizzle_scales(w.w2_scale)
    if variant == V2:
        s13, s2 = mma_view(s13), mma_view(s2)
    return w.replace(w13=w13.contiguous(), w13_scale=s13, w2_scale=s2,
                     layout=V1_LAYOUT if variant == V1 else V2_LAYOUT,
                     extras=(("scale_shapes", (tuple(w.w13_scale.shape[1:]),
                                               tuple(w.w2_scale.shape[1:]))),))


def canonical(processed: MoEWeights) -> MoEWeights:
    """Inverse of :func:`process`: the canonical weights the layout was made from."""
    (r13, c13), (r2, c2) = processed.extra("scale_shapes")
    s13, s2 = processed.w13_scale, processed.w2_scale
    v2 = processed.layout == V2_LAYOUT
    if v2:
        s13, s2 = from_mma_view(s13), from_mma_view(s2)
    s13, s2 = unswizzle_scales(s13, r13, c13), unswizzle_scales(s2, r2, c2)
    w13 = processed.w13
    if v2:
        w13, s13 = deinterleave_halves(w13), deinterleave_halves(s13)
    return processed.replace(w13=w13, w13_scale=s13.contiguous(), w2_scale=s2.contiguous(),
                             layout="canonical", extras=())
