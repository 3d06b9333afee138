"""Fused SiLU-and-mul (+ SwiGLU clamp) + per-token-group FP8 quant, one Triton kernel.

Reads the first GEMM's bf16 output ``h [..., M, 2I]`` ([gate | up]) and writes FP8 values
``q [..., M, I]`` and fp32 scales in DeepGEMM's MN-major layout (a ``[..., G, M]`` buffer
seen as ``[..., M, G]``), so the second GEMM takes them without a re-layout. Each program
handles a tile of 4 rows x 4 groups of 128 with no bounds masks: hence M % 4 == 0 and
G % 4 == 0, the constraints the plugin declares (scenario S1). The quantization is
:mod:`moe_core.kernels.triton_fp8`'s (the arithmetic of
:func:`moe_core.quant.fp8.quantize_fp8_blockwise`).
"""

from __future__ import annotations

import torch

from moe_core.kernels import interpreting
from moe_core.quant.fp8 import FP8_MAX, SCALE_FLOOR

TILE_M, TILE_G, GROUP = 4, 4, 128


def reference(h: torch.Tensor, limit: float | None, alpha: float | None):
    """The kernel's definition in PyTorch: ``(q, scales [..., M, G])``."""
    gate, up = h.float().chunk(2, dim=-1)
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    a = gate * torch.sigmoid(gate) * up if alpha is None else gate * torch.sigmoid(alpha * gate) * (up + 1)
    groups = a.unflatten(-1, (-1, GROUP))
    scale = groups.abs().amax(-1).clamp(min=SCALE_FLOOR) / FP8_MAX
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).flatten(-2).to(torch.float8_e4m3fn)
    return q, scale


def _kernel():
    import triton
    import triton.language as tl

    # Module globals, not locals: Triton's interpreter runs a kernel against its module's
    # globals (a closure's names are not seen), and this kernel is defined in a function.
    global fp8_grid_values, fp8_group_scales
    from moe_core.kernels.triton_fp8 import fp8_grid_values, fp8_group_scales

    @triton.jit
    def silu_mul_quant(h_ptr, q_ptr, s_ptr, cnt_ptr, M, I, limit, alpha,
                       HAS_LIMIT: tl.constexpr, OAI: tl.constexpr, HAS_CNT: tl.constexpr,
                       TM: tl.constexpr, TG: tl.constexpr, GS: tl.constexpr,
                       INTERPRETED: tl.constexpr):
        pid_m, pid_g, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        G = I // GS
        rows = pid_m * TM + tl.arange(0, TM)
        cols = pid_g * TG * GS + tl.arange(0, TG * GS)
        # No bounds masks (M % 4, G % 4); in the masked layout rows past the expert's
        # count are skipped (their outputs are unspecified, as DeepGEMM's are).
        live = rows < M
        if HAS_CNT:
            live = rows < tl.load(cnt_ptr + batch)
        h_row = h_ptr + batch.to(tl.int64) * M * 2 * I + rows[:, None].to(tl.int64) * 2 * I
        gate = tl.load(h_row + cols[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        up = tl.load(h_row + I + cols[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        if HAS_LIMIT:
            gate = tl.minimum(gate, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        if OAI:
            a = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
        else:
            a = gate * tl.sigmoid(gate) * up
        a3 = tl.reshape(a, (TM, TG, GS))
        scale = fp8_group_scales(a3, AXIS=2, UE8M0=False)
        q = fp8_grid_values(a3, scale, AXIS=2, INTERPRETED=INTERPRETED)
        q_row = q_ptr + batch.to(tl.int64) * M * I + rows[:, None].to(tl.int64) * I
        tl.store(q_row + cols[None, :], tl.reshape(q, (TM, TG * GS)).to(tl.float8e4nv), mask=live[:, None])
        gids = pid_g * TG + tl.arange(0, TG)
        s_off = batch.to(tl.int64) * G * M + gids[None, :].to(tl.int64) * M + rows[:, None]
        tl.store(s_ptr + s_off, scale, mask=live[:, None])

    return silu_mul_quant


_compiled = None


def fused_silu_mul_quant(h: torch.Tensor, limit: float | None = None, alpha: float | None = None,
                         counts: torch.Tensor | None = None):
    """``h [M, 2I]`` or ``[E, M, 2I]`` bf16 -> ``(q [..., M, I] e4m3, scales [..., M, G])``,
    scales MN-major. Needs M % 4 == 0 and (I / 128) % 4 == 0. With ``counts [E]`` (int32,
    masked layout) rows past ``counts[e]`` are skipped and left unwritten."""
    global _compiled
    squeeze = h.dim() == 2
    h3 = (h[None] if squeeze else h).contiguous()
    E, M, two_i = h3.shape
    I = two_i // 2
    G = I // GROUP
    if M % TILE_M or G % TILE_G or I % GROUP:
        raise ValueError(f"fused activation needs M % 4 == 0 and G % 4 == 0; got M={M}, G={G}")
    if not h.is_cuda:  # CPU (tests with a stand-in deep_gemm): the definition, same layout
        q, ref_s = reference(h3, limit, alpha)
        s = ref_s.transpose(1, 2).contiguous()
    else:
        if _compiled is None:
            _compiled = _kernel()
        q = torch.empty(E, M, I, dtype=torch.float8_e4m3fn, device=h.device)
        s = torch.empty(E, G, M, dtype=torch.float32, device=h.device)
    if M and h.is_cuda:
        grid = (M // TILE_M, G // TILE_G, E)
        _compiled[grid](h3, q, s, counts if counts is not None else h3, M, I,
                        float(limit or 0.0), float(alpha or 0.0),
                        HAS_LIMIT=limit is not None, OAI=alpha is not None, HAS_CNT=counts is not None,
                        TM=TILE_M, TG=TILE_G, GS=GROUP, INTERPRETED=interpreting())
    scales = s.transpose(1, 2)  # [E, M, G] view, MN-major as DeepGEMM wants
    return (q[0], scales[0]) if squeeze else (q, scales)
