"""bf16 rounding for interpreted Triton kernels: the one spelling of it.

Triton's interpreter (``TRITON_INTERPRET=1``) truncates fp32 -> bf16 casts where a GPU
rounds to nearest even; a kernel that writes bf16 rounds in fp32 first when interpreted, so
the cast that follows is exact and the bytes are a GPU's.

This module imports triton: import it only where triton is already imported (as
:mod:`moe_core.kernels.triton_fp8`).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_to_bf16_grid(x):
    """fp32 ``x`` rounded to the nearest bf16 value (ties to even), still fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)
