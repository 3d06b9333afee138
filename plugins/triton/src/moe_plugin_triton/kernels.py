"""The Triton kernels of the fused MoE and their launchers.

Rows are in the sorted layout of :func:`moe_core.kernels.align.align_by_expert`: row ``r``
holds top-k slot ``sorted_slots[r]`` (``t * k + s``; ``T * k`` marks a padding row), and
block ``r // BLOCK_M`` belongs to local expert ``block_expert[r // BLOCK_M]`` (-1: unused).

* :func:`launch_gemm` — ``out[r] = A[row(r)] @ W[e].T (+ bias[e])`` for every valid row of
  every used block, where ``row(r)`` is the slot's token (``GATHER``: the first GEMM reads
  the tokens in place) or ``r`` itself (the second GEMM reads the activation rows). FP8:
  e4m3 operands, per-row 1x128 activation scales and 128x128 weight scales per K step.
  ``SWAP``: the same product computed as ``(W @ A.T).T``, so a wide column tile rather than
  a short row tile fills the MMA's M side (:func:`swaps_operands` decides).
* :func:`launch_activation` — one program per (slot, column block): the gated (or relu2)
  activation of its row, written as bf16 or quantized to e4m3 in 1x128 groups
  (:mod:`moe_core.kernels.triton_fp8`) with the scales MN-major (``[G, rows]``), the layout
  the second GEMM reads.

This module imports triton; the plugin imports it only when a plan runs (``make_runner``).
Triton decides at decoration time whether a kernel runs in its CPU interpreter
(``TRITON_INTERPRET=1``), so that is fixed when this module is first imported.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

import torch

from moe_core.kernels import interpreting
from moe_core.kernels.triton_bf16 import round_to_bf16_grid
from moe_core.kernels.triton_fp8 import fp8_grid_values, fp8_group_scales
from moe_core.sizes import cdiv
from moe_core.spec import Activation

#: The activation kernel's codes (a constexpr: one compiled kernel per activation).
SILU, GELU_TANH, SWIGLU_CLAMP, SWIGLU_OAI, RELU2 = (tl.constexpr(i) for i in range(5))
FP8_GROUP = 128
#: Whether these kernels run in Triton's interpreter (tests on a CPU).
INTERPRET = interpreting()


def activation_code(spec) -> int:
    act = spec.activation
    if act is Activation.SWIGLU_LIMIT:
        return SWIGLU_CLAMP if spec.swiglu_alpha is None else SWIGLU_OAI
    return {Activation.SILU_GATED: SILU, Activation.GELU_GATED: GELU_TANH, Activation.RELU2: RELU2}[act]


# Triton's interpreter truncates fp32 -> bf16 casts and mis-rounds fp32 -> e4m3 ones (ties,
# carries: 7.8 -> 4.0); on values already on the target grid it is exact. When interpreting,
# the kernels round in fp32 first: bf16 with moe_core.kernels.triton_bf16, e4m3 in
# moe_core.kernels.triton_fp8.fp8_grid_values (a GPU never runs either rounding).
@triton.jit(do_not_specialize=["num_slots", "num_blocks", "top_k", "stride_asm", "stride_ask"])
def moe_gemm(a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, bias_ptr, c_ptr,
             sorted_slots_ptr, block_expert_ptr,
             N, K, num_slots, num_blocks, top_k, split_n, split_blocks,
             stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
             stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk, stride_biase,
             GATHER: tl.constexpr, HAS_BIAS: tl.constexpr, FP8: tl.constexpr,
             EVEN_K: tl.constexpr, SWAP: tl.constexpr, INTERPRET: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             GROUP_M: tl.constexpr):
    # Walk GROUP_M row blocks per column block so their weight tiles meet in L2.
    pid = tl.program_id(0)
    n_blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_blocks_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(num_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:  # past the last used block
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.load(sorted_slots_ptr + rows)
    valid = slots < num_slots
    # Padding rows read row 0 (a token; a written activation row: blocks exist only for
    # experts with rows, so row 0 is some expert's first) and are never stored.
    if GATHER:
        a_rows = tl.where(valid, slots // top_k, 0).to(tl.int64)
    else:
        a_rows = tl.where(valid, rows, 0).to(tl.int64)
    # Columns wrap (modulo N) so loads need no mask; the store masks them.
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_cols = cols % N
    offs_k = tl.arange(0, BLOCK_K)
    b_base = b_ptr + expert.to(tl.int64) * stride_be
    if SWAP:  # tiles [BLOCK_K, BLOCK_M] of A and [BLOCK_N, BLOCK_K] of W: acc is C's transpose
        a_ptrs = a_ptr + a_rows[None, :] * stride_am + offs_k[:, None] * stride_ak
        b_ptrs = b_base + b_cols[:, None] * stride_bn + offs_k[None, :] * stride_bk
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_base + b_cols[None, :] * stride_bn + offs_k[:, None] * stride_bk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FP8:
        # 128x128 weight blocks restart at the up half of a gated w13 (column split_n).
        scale_rows = tl.where(b_cols < split_n, b_cols // 128, split_blocks + (b_cols - split_n) // 128)
        b_scale_ptrs = b_scale_ptr + expert.to(tl.int64) * stride_bse + scale_rows * stride_bsn
        a_scale_ptrs = a_scale_ptr + a_rows * stride_asm
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        elif SWAP:
            k_left = K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        else:
            k_left = K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if INTERPRET:  # the interpreter's bf16/fp8 dots are wrong; its fp32 dot is exact
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if FP8:
            group = (kb * BLOCK_K) // 128
            a_s = tl.load(a_scale_ptrs + group * stride_ask)
            b_s = tl.load(b_scale_ptrs + group * stride_bsk)
            if SWAP:
                acc += tl.dot(b, a) * b_s[:, None] * a_s[None, :]
            else:
                acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        elif SWAP:
            acc = tl.dot(b, a, acc)
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if SWAP:
        acc = tl.trans(acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + expert.to(tl.int64) * stride_biase + b_cols)[None, :]
    if INTERPRET:
        acc = round_to_bf16_grid(acc)
    c_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & (cols[None, :] < N))

@triton.jit(do_not_specialize=["stride_sm", "stride_sg"])
def activate(h_ptr, out_ptr, scale_ptr, slot_rows_ptr, I, stride_hm, stride_om, stride_sg, stride_sm,
             limit, alpha, ACT: tl.constexpr, FP8: tl.constexpr, INTERPRET: tl.constexpr,
             BLOCK: tl.constexpr):
    row = tl.load(slot_rows_ptr + tl.program_id(0))
    if row < 0:  # the slot's expert lives on another rank
        return
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < I
    h_row = h_ptr + row.to(tl.int64) * stride_hm
    # Masked columns read 0, and every activation maps 0 (and gate 0) to 0: a ragged
    # last FP8 group's amax is its own elements'.
    if ACT == RELU2:  # not gated: the row is the up projection
        r = tl.maximum(tl.load(h_row + cols, mask=live, other=0.0).to(tl.float32), 0.0)
        a = r * r
    else:  # [gate | up] halves
        gate = tl.load(h_row + cols, mask=live, other=0.0).to(tl.float32)
        up = tl.load(h_row + I + cols, mask=live, other=0.0).to(tl.float32)
        if ACT == SWIGLU_CLAMP or ACT == SWIGLU_OAI:
            gate = tl.minimum(gate, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        if ACT == SWIGLU_OAI:  # gpt-oss: gate * sigmoid(alpha * gate) * (up + 1)
            a = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
        elif ACT == GELU_TANH:  # tanh approximation; tanh(z) = 2 sigmoid(2z) - 1
            z = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
            a = 0.5 * gate * (2.0 * tl.sigmoid(2.0 * z)) * up
        else:
            a = gate * tl.sigmoid(gate) * up
    out_row = out_ptr + row.to(tl.int64) * stride_om
    if FP8:
        groups = tl.reshape(a, (BLOCK // 128, 128))
        scale = fp8_group_scales(groups, AXIS=1, UE8M0=False)
        q = fp8_grid_values(groups, scale, AXIS=1, INTERPRETED=INTERPRET)
        tl.store(out_row + cols, tl.reshape(q, (BLOCK,)).to(tl.float8e4nv), mask=live)
        g = tl.program_id(1) * (BLOCK // 128) + tl.arange(0, BLOCK // 128)
        tl.store(scale_ptr + g * stride_sg + row.to(tl.int64) * stride_sm, scale, mask=g * 128 < I)
    else:
        if INTERPRET:
            a = round_to_bf16_grid(a)
        tl.store(out_row + cols, a.to(tl.bfloat16), mask=live)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def is_sm90(device: torch.device) -> bool:
    """Whether ``device`` is a Hopper GPU (SM 9.0); asked once per GPU."""
    return device.type == "cuda" and _capability(device.index if device.index is not None
                                                 else torch.cuda.current_device()) == (9, 0)


def swaps_operands(config, fp8: bool, device: torch.device) -> bool:
    """Whether a GEMM runs with A and W swapped (``SWAP``): FP8 on Hopper with a row tile
    shorter than 64 and a column tile of 64 or more. Hopper's FP8 MMA (wgmma) takes 64 rows
    on its M side, so a 16-row token tile leaves most of it idle where a 64+-column weight
    tile fills it; vLLM's fused-MoE kernel swaps under the same rule, and at 16 tokens of
    Qwen3-30B-A3B fp8 its two GEMMs took 104 µs against our unswapped 117 µs (H200,
    2026-12-01; tiles alike but for stages and the row-block walk). Not yet timed here."""
    return fp8 and config.block_m < 64 and config.block_n >= 64 and is_sm90(device)


def launch_gemm(a, w, out, sorted_slots, block_expert, config, *, num_slots: int, gather: bool,
                top_k: int = 1, a_scale=None, w_scale=None, bias=None, split_n: int | None = None) -> None:
    """``out [rows, N]`` (rows of the sorted layout) from ``a`` and ``w [E, N, K]``.

    ``gather``: ``a [T, K]`` holds the tokens and row ``r`` reads token
    ``sorted_slots[r] // top_k``; else ``a [rows, K]`` is read row for row. FP8: ``a`` and
    ``w`` e4m3, ``a_scale [rows of a, ceil(K/128)]`` (any strides), ``w_scale [E, Nb, Kb]``
    whose block rows restart at column ``split_n`` (the up half of a gated w13).
    ``bias [E, N]`` fp32. ``num_slots`` (``T * k``) tells slots from padding.
    """
    _, N, K = w.shape
    num_blocks = block_expert.shape[0]
    c = config
    fp8 = w_scale is not None
    split_n = N if split_n is None else split_n
    a_s = a_scale if fp8 else a  # unused pointers get any tensor (their constexpr is off)
    w_s = w_scale if fp8 else w
    b = bias if bias is not None else w
    moe_gemm[(num_blocks * cdiv(N, c.block_n),)](
        a, a_s, w, w_s, b, out, sorted_slots, block_expert,
        N, K, num_slots, num_blocks, top_k, split_n, cdiv(split_n, FP8_GROUP),
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        a_s.stride(0) if fp8 else 0, a_s.stride(1) if fp8 else 0,
        w_s.stride(0) if fp8 else 0, w_s.stride(1) if fp8 else 0, w_s.stride(2) if fp8 else 0,
        b.stride(0) if bias is not None else 0,
        GATHER=gather, HAS_BIAS=bias is not None, FP8=fp8, EVEN_K=K % c.block_k == 0,
        SWAP=swaps_operands(c, fp8, out.device), INTERPRET=INTERPRET,
        BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m, num_warps=c.num_warps, num_stages=c.num_stages)


def activation_block(intermediate: int) -> int:
    """Columns per activation program: whole 128-groups, at most 1024."""
    block = FP8_GROUP
    while block < min(intermediate, 1024):
        block *= 2
    return block


def launch_activation(h, out, slot_rows, *, intermediate: int, act: int, scale=None,
                      limit: float | None = None, alpha: float | None = None) -> None:
    """``out [rows, I]`` = the activation of ``h [rows, R]`` at every local slot's row
    (``slot_rows``, -1: another rank's expert); with ``scale [rows, ceil(I/128)]``
    (MN-major strides) ``out`` is e4m3, quantized per 1x128 group."""
    n = slot_rows.shape[0]
    if n == 0:
        return
    block = activation_block(intermediate)
    s = scale if scale is not None else out
    activate[(n, cdiv(intermediate, block))](
        h, out, s, slot_rows, intermediate, h.stride(0), out.stride(0),
        s.stride(1) if scale is not None else 0, s.stride(0) if scale is not None else 0,
        float(limit or 0.0), float(alpha or 0.0),
        ACT=act, FP8=scale is not None, INTERPRET=INTERPRET, BLOCK=block, num_warps=4)
