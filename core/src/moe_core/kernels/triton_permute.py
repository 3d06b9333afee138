"""Triton kernels of :mod:`.permute`: tokens -> a grouped layout, optionally quantized.

FP8 programs each take one 1x128 group of columns and write e4m3 values with fp32 scales
``amax / 448`` (floor 1e-12: :mod:`.triton_fp8`, the arithmetic of
:func:`moe_core.quant.fp8.quantize_fp8_blockwise`) MN-major: the scale of (row, group) at
``group * rows + row`` within its expert.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_fp8 import fp8_grid_values, fp8_group_scales


@triton.jit
def gather_contiguous(x_ptr, sorted_ptr, block_expert_ptr, m_indices_ptr, out_ptr, s_ptr,
                      n, k, H, cap, block, BM: tl.constexpr, BH: tl.constexpr, FP8: tl.constexpr,
                      INTERPRETED: tl.constexpr):
    """Row ``r`` of the padded layout <- token ``sorted[r] // k`` (zeros on padding rows);
    rows of unused blocks (``block_expert < 0``) are left unwritten: DeepGEMM skips them."""
    pid_m, pid_h = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    in_cap = rows < cap
    expert = tl.load(block_expert_ptr + rows // block, mask=in_cap, other=-1)
    slot = tl.load(sorted_ptr + rows, mask=in_cap, other=n)
    valid = (slot < n) & (expert >= 0)
    used = in_cap & (expert >= 0)
    tl.store(m_indices_ptr + rows, tl.where(valid, expert, -1), mask=in_cap & (pid_h == 0))
    token = tl.where(valid, slot // k, 0).to(tl.int64)
    cols = pid_h * BH + tl.arange(0, BH)
    in_h = cols < H
    v = tl.load(x_ptr + token[:, None] * H + cols[None, :], mask=valid[:, None] & in_h[None, :], other=0.0)
    at = rows.to(tl.int64)[:, None] * H + cols[None, :]
    if FP8:
        f = v.to(tl.float32)
        scale = fp8_group_scales(f, AXIS=1, UE8M0=False)
        q = fp8_grid_values(f, scale, AXIS=1, INTERPRETED=INTERPRETED)
        tl.store(out_ptr + at, q.to(tl.float8e4nv), mask=used[:, None] & in_h[None, :])
        tl.store(s_ptr + pid_h.to(tl.int64) * cap + rows, scale, mask=used)
    else:
        tl.store(out_ptr + at, v, mask=used[:, None] & in_h[None, :])


@triton.jit
def scatter_masked(x_ptr, slot_rows_ptr, out_ptr, s_ptr, n, k, H, max_m, G,
                   BS: tl.constexpr, BH: tl.constexpr, FP8: tl.constexpr,
                   INTERPRETED: tl.constexpr):
    """Token ``slot // k`` -> row ``slot_rows[slot]`` of the ``[E * max_m, H]`` buffer."""
    pid_s, pid_h = tl.program_id(0), tl.program_id(1)
    slots = pid_s * BS + tl.arange(0, BS)
    row = tl.load(slot_rows_ptr + slots, mask=slots < n, other=-1)
    valid = row >= 0
    token = (slots // k).to(tl.int64)
    cols = pid_h * BH + tl.arange(0, BH)
    in_h = cols < H
    mask = valid[:, None] & in_h[None, :]
    v = tl.load(x_ptr + token[:, None] * H + cols[None, :], mask=mask, other=0.0)
    at = row.to(tl.int64)[:, None] * H + cols[None, :]
    if FP8:
        f = v.to(tl.float32)
        scale = fp8_group_scales(f, AXIS=1, UE8M0=False)
        q = fp8_grid_values(f, scale, AXIS=1, INTERPRETED=INTERPRETED)
        tl.store(out_ptr + at, q.to(tl.float8e4nv), mask=mask)
        expert = row // max_m
        m = row - expert * max_m
        tl.store(s_ptr + (expert.to(tl.int64) * G + pid_h) * max_m + m, scale, mask=valid)
    else:
        tl.store(out_ptr + at, v, mask=mask)
