"""Fused SiLU-and-mul (+ SwiGLU clamp) + per-token-group FP8 quant, one Triton kernel.

Reads the first GEMM's bf16 output ``h [..., M, 2I]`` ([gate | up]) and writes FP8 values
``q [..., M, I]`` and fp32 scales in DeepGEMM's MN-major layout (a ``[..., G, M]`` buffer
seen as ``[..., M, G]``), so the second GEMM takes them without a re-layout. Each program
handles a tile of 4 rows x 4 groups of 128 with no column masks: hence M % 4 == 0 and
G % 4 == 0, the constraints the plugin declares (scenario S1). The quantization is
:mod:`moe_core.kernels.triton_fp8`'s (the arithmetic of
:func:`moe_core.quant.fp8.quantize_fp8_blockwise`).

The same kernel with ``QUANT=False`` (:func:`silu_mul`) writes the activation in bf16
instead, for the unfused variants' first step (FP8 quantization stays a separate step
there); its tiles are masked on both axes, so it takes any M and I.

Both skip the rows no GEMM reads, so their cost follows the routed rows rather than the
buffer: with per-expert ``counts`` (the masked layout ``[E, M, 2I]``) the rows past each
expert's count, whole tiles of them without a load; with ``row_expert`` (DeepGEMM's
contiguous layout ``[M, 2I]``, its ``m_indices``) the padding rows, marked -1. Skipped rows
are left unwritten. (Measured on an H200, 2026-12-01, DeepSeek-V3 EP 8 at 16K routed rows:
torch's two-kernel SiLU-and-mul over the contiguous capacity took 283 us of a 1.89 ms layer.)
"""

from __future__ import annotations

import torch

from moe_core.kernels import interpreting, on_triton
from moe_core.quant.fp8 import FP8_MAX, SCALE_FLOOR

TILE_M, TILE_G, GROUP = 4, 4, 128
#: :func:`silu_mul`'s column tile (the fused kernel's 4 groups of 128).
TILE_N = TILE_G * GROUP


def reference(h: torch.Tensor, limit: float | None, alpha: float | None):
    """The kernel's definition in PyTorch: ``(q, scales [..., M, G])``."""
    groups = _activation_fp32(h, limit, alpha).unflatten(-1, (-1, GROUP))
    scale = groups.abs().amax(-1).clamp(min=SCALE_FLOOR) / FP8_MAX
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).flatten(-2).to(torch.float8_e4m3fn)
    return q, scale


def reference_bf16(h: torch.Tensor, limit: float | None, alpha: float | None) -> torch.Tensor:
    """:func:`silu_mul`'s definition: the activation in fp32, rounded once to bf16."""
    return _activation_fp32(h, limit, alpha).to(torch.bfloat16)


def _activation_fp32(h: torch.Tensor, limit: float | None, alpha: float | None) -> torch.Tensor:
    gate, up = h.float().chunk(2, dim=-1)
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return gate * torch.sigmoid(gate) * up if alpha is None else gate * torch.sigmoid(alpha * gate) * (up + 1)


def _kernel():
    import triton
    import triton.language as tl

    # Module globals, not locals: Triton's interpreter runs a kernel against its module's
    # globals (a closure's names are not seen), and this kernel is defined in a function.
    global fp8_grid_values, fp8_group_scales, round_to_bf16_grid
    from moe_core.kernels.triton_bf16 import round_to_bf16_grid
    from moe_core.kernels.triton_fp8 import fp8_grid_values, fp8_group_scales

    @triton.jit
    def silu_mul_quant(h_ptr, q_ptr, s_ptr, cnt_ptr, map_ptr, M, I, limit, alpha,
                       HAS_LIMIT: tl.constexpr, OAI: tl.constexpr, HAS_CNT: tl.constexpr,
                       HAS_MAP: tl.constexpr,
                       QUANT: tl.constexpr, TM: tl.constexpr, TG: tl.constexpr, GS: tl.constexpr,
                       INTERPRETED: tl.constexpr):
        # QUANT: FP8 values to q_ptr and scales to s_ptr; otherwise bf16 to q_ptr (s_ptr unused).
        pid_m, pid_g, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = pid_m * TM + tl.arange(0, TM)
        cols = pid_g * TG * GS + tl.arange(0, TG * GS)
        # Rows no GEMM reads are skipped, their outputs unspecified as DeepGEMM's are: past
        # the expert's count (masked layout), or marked -1 (contiguous layout's padding).
        # QUANT: no column masks (G % 4).
        live = rows < M
        if HAS_CNT:
            count = tl.load(cnt_ptr + batch)
            if pid_m * TM >= count:  # the whole tile is past the count
                return
            live = live & (rows < count)
        if HAS_MAP:
            live = live & (tl.load(map_ptr + rows, mask=live, other=-1) >= 0)
        if QUANT:
            fit = live[:, None]
        else:
            fit = live[:, None] & (cols[None, :] < I)
        h_row = h_ptr + batch.to(tl.int64) * M * 2 * I + rows[:, None].to(tl.int64) * 2 * I
        gate = tl.load(h_row + cols[None, :], mask=fit, other=0.0).to(tl.float32)
        up = tl.load(h_row + I + cols[None, :], mask=fit, other=0.0).to(tl.float32)
        if HAS_LIMIT:
            gate = tl.minimum(gate, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        if OAI:
            a = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
        else:
            a = gate * tl.sigmoid(gate) * up
        q_row = q_ptr + batch.to(tl.int64) * M * I + rows[:, None].to(tl.int64) * I
        if QUANT:
            G = I // GS
            a3 = tl.reshape(a, (TM, TG, GS))
            scale = fp8_group_scales(a3, AXIS=2, UE8M0=False)
            q = fp8_grid_values(a3, scale, AXIS=2, INTERPRETED=INTERPRETED)
            tl.store(q_row + cols[None, :], tl.reshape(q, (TM, TG * GS)).to(tl.float8e4nv), mask=fit)
            gids = pid_g * TG + tl.arange(0, TG)
            s_off = batch.to(tl.int64) * G * M + gids[None, :].to(tl.int64) * M + rows[:, None]
            tl.store(s_ptr + s_off, scale, mask=fit)
        else:
            if INTERPRETED:
                a = round_to_bf16_grid(a)
            tl.store(q_row + cols[None, :], a.to(tl.bfloat16), mask=fit)

    return silu_mul_quant


_compiled = None


def fused_silu_mul_quant(h: torch.Tensor, limit: float | None = None, alpha: float | None = None,
                         counts: torch.Tensor | None = None, row_expert: torch.Tensor | None = None):
    """``h [M, 2I]`` or ``[E, M, 2I]`` bf16 -> ``(q [..., M, I] e4m3, scales [..., M, G])``,
    scales MN-major. Needs M % 4 == 0 and (I / 128) % 4 == 0. Rows skipped and left
    unwritten: with ``counts [E]`` (int32, masked layout) those past ``counts[e]``; with
    ``row_expert [M]`` (int32, 2-D ``h``, contiguous layout) those marked -1."""
    _check_filter(h, counts, row_expert)
    squeeze = h.dim() == 2
    h3 = (h[None] if squeeze else h).contiguous()
    E, M, two_i = h3.shape
    I = two_i // 2
    G = I // GROUP
    if M % TILE_M or G % TILE_G or I % GROUP:
        raise ValueError(f"fused activation needs M % 4 == 0 and G % 4 == 0; got M={M}, G={G}")
    if not on_triton(h):  # CPU (tests with a stand-in deep_gemm): the definition, same layout
        q, ref_s = reference(h3, limit, alpha)
        s = ref_s.transpose(1, 2).contiguous()
    else:  # CUDA, or CPU under Triton's interpreter (tests)
        q = torch.empty(E, M, I, dtype=torch.float8_e4m3fn, device=h.device)
        s = torch.empty(E, G, M, dtype=torch.float32, device=h.device)
        if M and E:
            _launch((M // TILE_M, G // TILE_G, E), h3, q, s, counts, row_expert, M, I, limit, alpha,
                    quant=True, tg=TILE_G, gs=GROUP)
    scales = s.transpose(1, 2)  # [E, M, G] view, MN-major as DeepGEMM wants
    return (q[0], scales[0]) if squeeze else (q, scales)


def silu_mul(h: torch.Tensor, limit: float | None = None, alpha: float | None = None,
             counts: torch.Tensor | None = None, out: torch.Tensor | None = None,
             row_expert: torch.Tensor | None = None) -> torch.Tensor:
    """``h [M, 2I]`` or ``[E, M, 2I]`` bf16 -> ``a [..., M, I]`` bf16, the fused kernel's
    activation without its quantization, computed in fp32 and rounded once. Any M and I.
    Rows skipped as :func:`fused_silu_mul_quant` skips them (``counts``, ``row_expert``) are
    left unwritten (in ``out`` when given: a contiguous bf16 tensor of the result's shape).
    Not on Triton (CPU without the interpreter): the definition, on every row."""
    _check_filter(h, counts, row_expert)
    squeeze = h.dim() == 2
    h3 = (h[None] if squeeze else h).contiguous()
    E, M, two_i = h3.shape
    I = two_i // 2
    if out is not None and (out.dtype != torch.bfloat16 or not out.is_contiguous()
                            or out.shape != h.shape[:-1] + (I,)):
        raise ValueError(f"out must be a contiguous bf16 {tuple(h.shape[:-1]) + (I,)} tensor")
    if not on_triton(h):
        a = reference_bf16(h3, limit, alpha)
        if out is not None:
            return out.copy_(a[0] if squeeze else a)
    else:
        a = torch.empty(E, M, I, dtype=torch.bfloat16, device=h.device) if out is None else out.view(E, M, I)
        if M and E and I:
            _launch((-(-M // TILE_M), -(-I // TILE_N), E), h3, a, a, counts, row_expert, M, I, limit,
                    alpha, quant=False, tg=1, gs=TILE_N)
    return a[0] if squeeze else a


def _check_filter(h: torch.Tensor, counts, row_expert) -> None:
    """The row filters' contracts (a wrong one would read or skip the wrong rows)."""
    if counts is not None and row_expert is not None:
        raise ValueError("give counts (masked layout) or row_expert (contiguous layout), not both")
    if counts is not None and (h.dim() != 3 or counts.shape != h.shape[:1] or counts.dtype != torch.int32
                               or not counts.is_contiguous() or counts.device != h.device):
        raise ValueError(f"counts must be a contiguous int32 [E] tensor on {h.device} for a 3-D h "
                         f"[E, M, 2I]; got {counts.dtype} {tuple(counts.shape)} on {counts.device} "
                         f"for h {tuple(h.shape)}")
    if row_expert is not None and (h.dim() != 2 or row_expert.shape != h.shape[:1]
                                   or row_expert.dtype != torch.int32 or not row_expert.is_contiguous()
                                   or row_expert.device != h.device):
        raise ValueError(f"row_expert must be a contiguous int32 [M] tensor on {h.device} for a 2-D h "
                         f"[M, 2I]; got {row_expert.dtype} {tuple(row_expert.shape)} on "
                         f"{row_expert.device} for h {tuple(h.shape)}")


def _launch(grid, h3, out, scales, counts, row_expert, M, I, limit, alpha, *, quant: bool, tg: int,
            gs: int):
    global _compiled
    if _compiled is None:
        _compiled = _kernel()
    _compiled[grid](h3, out, scales, counts if counts is not None else h3,
                    row_expert if row_expert is not None else h3, M, I,
                    float(limit or 0.0), float(alpha or 0.0),
                    HAS_LIMIT=limit is not None, OAI=alpha is not None, HAS_CNT=counts is not None,
                    HAS_MAP=row_expert is not None, QUANT=quant, TM=TILE_M, TG=tg, GS=gs,
                    INTERPRETED=interpreting())
