"""FP8 e4m3 quantization in 1x128 groups, as Triton device functions: the one spelling of the
formula every Triton kernel that writes FP8 activations calls.

The arithmetic of :func:`moe_core.quant.fp8.quantize_fp8_blockwise` (and its constants)::

    scale = max(amax(|x|), 1e-12) / 448       (optionally rounded up to a power of two: UE8M0)
    q     = clamp(x / scale, -448, 448).to(e4m3)

A kernel calls :func:`fp8_group_scales`, then :func:`fp8_grid_values`, and casts the result
with ``.to(tl.float8e4nv)``. On a GPU that cast rounds to nearest even, as torch's
``.to(torch.float8_e4m3fn)`` does. Triton's interpreter (``TRITON_INTERPRET=1``) mis-rounds
it (ties away from zero, lost mantissa carries: 7.8 -> 4.0, subnormals) but casts values
already on the e4m3 grid exactly; with ``INTERPRETED`` set, :func:`fp8_grid_values` rounds
onto that grid in fp32 first (ties to even), so an interpreted kernel writes what torch's
cast writes for the same fp32 values. On a GPU ``x / scale`` is not correctly rounded (one
ulp), so a value at a rounding boundary can land one e4m3 step away: the GPU tests allow it.

This module imports triton: import it only where triton is already imported (the kernel
factories, and modules that are themselves imported only when a kernel runs).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..quant.fp8 import FP8_MAX, SCALE_FLOOR

_MAX = tl.constexpr(FP8_MAX)
_FLOOR = tl.constexpr(SCALE_FLOOR)


@triton.jit
def fp8_group_scales(x, AXIS: tl.constexpr, UE8M0: tl.constexpr):
    """fp32 scales of fp32 ``x``'s groups, one per index of the other axes (``AXIS`` is
    reduced): ``max(amax(|x|), 1e-12) / 448``; with ``UE8M0`` rounded up to a power of two."""
    scale = tl.maximum(tl.max(tl.abs(x), axis=AXIS), _FLOOR) / _MAX
    if UE8M0:
        scale = tl.exp2(tl.ceil(tl.log2(scale)))
    return scale


@triton.jit
def fp8_grid_values(x, scale, AXIS: tl.constexpr, INTERPRETED: tl.constexpr):
    """``x / scale`` (``scale`` from :func:`fp8_group_scales` with the same ``AXIS``) clamped
    to +-448, fp32: what ``.to(tl.float8e4nv)`` takes. ``INTERPRETED`` (the kernel runs in
    Triton's interpreter): rounded onto the e4m3 grid here, ties to even, so the cast is exact."""
    y = tl.minimum(tl.maximum(x / tl.expand_dims(scale, AXIS), -_MAX), _MAX)
    if INTERPRETED:
        y = _round_to_e4m3_grid(y)
    return y


@triton.jit
def _round_to_e4m3_grid(y):
    """Round fp32 ``|y| <= 448`` to the nearest e4m3 value (ties to even), in fp32, keeping
    the sign (of zeros too: what rounds to zero from below is -0.0, as torch's and the GPU's
    casts give)."""
    a = tl.abs(y)
    # The e4m3 step at |y|: 2**(exponent - 3), and 2**-9 below the least normal 2**-6.
    step = tl.exp2(tl.maximum(tl.floor(tl.log2(tl.maximum(a, 1e-30))), -6.0) - 3.0)
    z = a / step  # exact: step is a power of two
    r = tl.floor(z + 0.5)
    r = tl.where(((r - z) == 0.5) & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0), r - 1.0, r)
    m = r * step
    # times -1, not -m (which Triton spells 0 - m: +0.0); a zero y is kept as it is
    return tl.where(y == 0.0, y, tl.where(y < 0.0, m * -1.0, m))
