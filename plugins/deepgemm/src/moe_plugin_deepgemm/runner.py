"""The DeepGEMM runner: two grouped GEMMs around the activation step, per the plan."""

from __future__ import annotations

import math

import torch

from moe_core.activations import apply_activation
from moe_core.kernels.align import capacity
from moe_core.kernels.group_quant import quantize_groups
from moe_core.kernels.permute import permute_contiguous, permute_masked, unpermute
from moe_core.runner import GroupedRunner, expert_of_rows, masked_layout, valid_rows
from moe_core.sizes import cdiv, round_up
from moe_core.spec import Activation, Quant

from .constraints import MASKED_ROWS

RECIPE = (1, 128, 128)  # 1x128 activation groups, 128x128 weight blocks
#: Activations of the unfused variants that :func:`.fused_act.silu_mul` computes, on the rows the
#: second GEMM reads only (counted rows, or the contiguous layout's unpadded ones); the others
#: (gelu_gated, relu2) take ``apply_activation``, every row. (A SwiGLU clamp is declared for the
#: fused variants alone: constraints.py.)
KERNEL_ACTIVATIONS = (Activation.SILU_GATED,)
#: The standard call's path (:meth:`DeepGemmRunner.uses_masked`, from ``T`` alone): the masked
#: GEMMs over an ``[E, round_up(T, 128), H]`` buffer (experts without tokens skipped), or the
#: contiguous GEMMs over ``T * k + E * (align - 1)`` rows (rounded up to ``align``; DeepGEMM
#: still loads their unused blocks). Masked when all three hold: T <= MASKED_MAX_TOKENS, its
#: buffers within MASKED_MAX_BYTES, and its rows at most MASKED_ROW_RATIO times the contiguous
#: capacity. What was measured, one H200, CUDA-graph replays:
#:
#: * benchmarks/permute_bench.py (2026-12-01), DeepSeek-V3 EP 8 (E_local 32, top-8, H 7168,
#:   I 2048) with tokens routed over all 256 experts: only ~2,075 of the 16,384 slots local at
#:   T = 2048. Masked faster at every T timed, 4 to 2048 (2048: 1.65 vs 2.76 ms bf16, 0.65 vs
#:   1.40 ms fp8).
#: * benchmarks/layer_bench.py, whole layer, every slot local (16K routed rows at T = 2048).
#:   DeepSeek-V3 EP 8 experts: the standard call (masked) vs the contiguous layout, 3.345 vs
#:   3.071 ms bf16 unfused, 2.297 vs 1.876 ms fp8 unfused, 1.576 vs 1.652 ms fp8 fused. At
#:   T = 512 (ratio 2.0) masked won unfused too: 1.085 vs 1.406 ms bf16, 0.741 vs 0.853 fp8.
#:   Qwen3-30B-A3B (E 128, top-8, H 2048, I 768): the standard call (masked) 1.723 ms bf16 /
#:   1.658 ms fp8 vs 0.822 / 0.589 ms in the contiguous layout with exact per-expert alignment.
#:   At T = 256, fp8: 0.385 ms standard vs 0.295 ms in the masked layout with a tight buffer.
#:
#: The row ratio is inferred from these points, not swept. Masked rows / contiguous capacity
#: (which counts every slot, local or not): DeepSeek-V3 EP 8 at T = 2048 3.2 (masked won only
#: with the fused activation), at 512 2.0 (masked won); Qwen3-30B-A3B at 2048 8.0 and at 512
#: 3.2 (0.674 vs 0.605 ms bf16, 0.556 vs 0.407 fp8: contiguous won). Hence 4 fused, 3 unfused.
#: The masked buffer grows as E * T, hence the cap in bytes too.
#:
#: With this rule and the activation on the GEMMs' rows only (fused_act.py), layer_bench
#: (2026-12-01, fourth session) has every standard call at 512 and 2,048 tokens (4K and 16K
#: routed rows) within 1.0x of the contiguous layout's:
#: DeepSeek-V3 bf16 0.879 ms (masked) vs 1.314 at T = 512, 2.804 (contiguous) vs 3.003 at
#: 2048; fp8 fused 0.529 vs 0.760 and 1.441 (masked) vs 1.632; Qwen3 (contiguous from 512)
#: 0.516 vs 0.524 and 0.675 vs 0.702 bf16, 0.325 vs 0.326 and 0.464 vs 0.469 fp8.
MASKED_MAX_TOKENS = 2048
#: The most the masked path's buffers may hold at once (:meth:`DeepGemmRunner.masked_bytes`:
#: the input, both GEMM outputs); DeepSeek-V3 EP 8 at 2048 tokens in bf16 needs 2.4 GB.
MASKED_MAX_BYTES = 3 << 30
#: Masked buffer rows (``E * round_up(T, 128)``) allowed per contiguous capacity row, by
#: whether the activation is fused (True) or not.
MASKED_ROW_RATIO = {True: 4, False: 3}


def activation_step(spec, h: torch.Tensor, *, fused: bool, counts: torch.Tensor | None = None,
                    m_indices: torch.Tensor | None = None):
    """The first GEMM's output ``h`` -> the second GEMM's operand (bf16, or fp8 with its
    1x128 scales). The fused kernel and :data:`KERNEL_ACTIVATIONS` skip the rows no GEMM reads:
    past ``counts`` (the masked layout's per-expert row counts), or marked -1 in ``m_indices``
    (the contiguous layout's row experts); other activations run on every row. The runner's
    step, and what benchmarks/peers/direct.py calls between DeepGEMM's GEMMs."""
    if fused:
        from .fused_act import fused_silu_mul_quant

        return fused_silu_mul_quant(h, spec.swiglu_limit, spec.swiglu_alpha, counts, m_indices)
    # Unfused: two steps, the activation in bf16, then (fp8) the group quantization.
    if spec.activation in KERNEL_ACTIVATIONS:
        from .fused_act import silu_mul

        # Over the whole buffer ([E, M, 2I], or T * k + E * (align - 1) contiguous rows) the cost
        # would follow its size, not the routed rows.
        a = silu_mul(h, spec.swiglu_limit, spec.swiglu_alpha, counts, row_expert=m_indices)
    else:
        a = apply_activation(spec, h)  # bf16, every row
    return quantize_groups(a, counts=counts) if spec.quant is Quant.FP8_BLOCK128 else a


class DeepGemmRunner(GroupedRunner):
    """``contiguous*`` variants compute natively in the contiguous layout (rows per expert
    padded to DeepGEMM's M alignment, ``-1`` rows between), ``masked*`` ones in the masked
    layout; each gets the other layouts through :class:`GroupedRunner`'s conversions."""

    def __init__(self, plan, weights):
        super().__init__(plan, weights)
        import deep_gemm  # only now: the plan chose DeepGEMM

        self.dg = deep_gemm
        self.fp8 = self.spec.quant is Quant.FP8_BLOCK128
        self.fused = plan.variant.endswith("_fused")
        self.masked = plan.variant.startswith("masked")
        self.align = deep_gemm.get_mk_alignment_for_contiguous_layout()
        # DeepGEMM's hint for masked kernels: tokens an expert is expected to get.
        s = self.spec
        self.expected_m = max(1, math.ceil(s.rows_per_local_expert(s.max_tokens)))
        #: (block_m, threshold) of the last masked down GEMM, only when overlap is on (S5).

    # -- pieces --------------------------------------------------------------------
    def _activation(self, h: torch.Tensor, counts: torch.Tensor | None = None,
                    m_indices: torch.Tensor | None = None):
        return activation_step(self.spec, h, fused=self.fused, counts=counts, m_indices=m_indices)

    def _gemm(self, a, which: str, layout, *, masked_m=None, expected_m=None):
        w = getattr(self.weights, which)
        lead = a[0].shape[:-1] if self.fp8 else a.shape[:-1]
        d = torch.empty(*lead, w.shape[1], dtype=torch.bfloat16, device=w.device)
        dg = self.dg
        if masked_m is None:
            if self.fp8:
                dg.m_grouped_fp8_gemm_nt_contiguous(a, (w, getattr(self.weights, which + "_scale")), d,
                                                    layout, recipe=RECIPE)
            else:
                dg.m_grouped_bf16_gemm_nt_contiguous(a, w, d, layout)
            return d, None
        expected_m = expected_m or self.expected_m  # the hint: actual T, or the plan's
        if self.fp8:
            ret = dg.m_grouped_fp8_gemm_nt_masked(a, (w, getattr(self.weights, which + "_scale")), d,
                                                  masked_m, expected_m, recipe=RECIPE)
        else:
            ret = dg.m_grouped_bf16_gemm_nt_masked(a, w, d, masked_m, expected_m)
        return d, ret

    # -- layouts ---------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """Standard layout: permute (+ FP8 quant) on the device, both GEMMs, weighted combine.
        No host synchronisation; every shape follows from ``T`` (CUDA-graph capturable)."""
        T = x.shape[0]
        if T == 0:
            return x.new_zeros(0, self.spec.hidden_size)
        run = self._standard_masked if self.uses_masked(T) else self._standard_contiguous
        return run(x, topk_weights, topk_ids)

    #: ``"masked" / ``"contiguous"``: the standard call's path forced (benchmarks, tests);
    #: None: :meth:`uses_masked`'s rule.
    force_path: str | None = None

    def uses_masked(self, tokens: int) -> bool:
        """Whether the standard call with ``tokens`` tokens takes the masked GEMMs (else the
        contiguous ones): at most ``MASKED_MAX_TOKENS`` tokens, the buffers within
        ``MASKED_MAX_BYTES``, and ``E * round_up(T, 128)`` rows at most ``MASKED_ROW_RATIO``
        (by fused or not) times the contiguous path's capacity (see the constants). From
        ``tokens`` alone, so a captured CUDA graph replays the path it was captured with."""
        if self.force_path is not None:
            if self.force_path not in ("masked", "contiguous"):
                raise ValueError(f"force_path must be 'masked', 'contiguous' or None, "
                                 f"got {self.force_path!r}")
            return self.force_path == "masked"
        s = self.spec
        masked_rows = s.local_experts * round_up(tokens, MASKED_ROWS)
        contiguous_rows = capacity(tokens * s.top_k, s.local_experts, self.align)
        return (tokens <= MASKED_MAX_TOKENS and self.masked_bytes(tokens) <= MASKED_MAX_BYTES
                and masked_rows <= MASKED_ROW_RATIO[self.fused] * contiguous_rows)

    def masked_bytes(self, tokens: int) -> int:
        """Bytes of the masked path's buffers for ``tokens``: the input (fp8 or bf16), the
        first GEMM's bf16 output and the second's, each ``[E_local, round_up(T, 128), ...]``."""
        s = self.spec
        rows = s.local_experts * round_up(tokens, MASKED_ROWS)
        return rows * (s.hidden_size * (1 if self.fp8 else 2) + s.w13_rows * 2 + s.hidden_size * 2)

    def _standard_masked(self, x, topk_weights, topk_ids) -> torch.Tensor:
        s, T = self.spec, x.shape[0]
        p = permute_masked(x, topk_ids, s.first_expert, s.local_experts, round_up(T, MASKED_ROWS), fp8=self.fp8)
        # Slots an expert of this rank expects: T * k spread over every rank's experts.
        y = self._masked_gemms(p.rows, p.masked_m, max(1, cdiv(T * s.top_k, s.num_experts)))
        return unpermute(y, p.slot_rows, topk_weights)

    def _standard_contiguous(self, x, topk_weights, topk_ids) -> torch.Tensor:
        s = self.spec
        p = permute_contiguous(x, topk_ids, s.first_expert, s.local_experts, self.align, fp8=self.fp8)
        return unpermute(self._contiguous_gemms(p.rows, p.m_indices), p.slot_rows, topk_weights)

    def _contiguous_gemms(self, a, m_indices: torch.Tensor) -> torch.Tensor:
        h, _ = self._gemm(a, "w13", m_indices)
        y, _ = self._gemm(self._activation(h, m_indices=m_indices), "w2", m_indices)
        return y

    def _masked_gemms(self, a, masked_m: torch.Tensor, expected_m: int) -> torch.Tensor:
        h, _ = self._gemm(a, "w13", None, masked_m=masked_m, expected_m=expected_m)
        y, _ = self._gemm(self._activation(h, masked_m), "w2", None, masked_m=masked_m,
                          expected_m=expected_m)
        return y

    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if self.masked:
            masked, counts = masked_layout(x, offsets, round_up(max(int(offsets.diff().max()), 1), MASKED_ROWS))
            out = self.run_masked(masked, counts)
            return out[valid_rows(counts, out.shape[1])]
        N, E = x.shape[0], self.spec.local_experts
        if N == 0:
            return x.new_zeros(0, self.spec.hidden_size)
        # Rows already grouped: each row's expert as a top-1 routing, through the same
        # permute as the standard layout (no host synchronisation).
        expert = expert_of_rows(offsets, N)
        p = permute_contiguous(x, expert.view(N, 1), 0, E, self.align, fp8=self.fp8)
        return self._contiguous_gemms(p.rows, p.m_indices).index_select(0, p.slot_rows.long())

    def run_masked(self, x: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
        if not self.masked:
            return super().run_masked(x, masked_m)
        rows = x.shape[1]
        if rows % MASKED_ROWS:  # not whole tiles: pad (a copy) rather than let tiles overlap
            x = torch.nn.functional.pad(x, (0, 0, 0, round_up(rows, MASKED_ROWS) - rows))
            return self.run_masked(x, masked_m)[:, :rows]
        mm = masked_m.to(torch.int32).contiguous()
        a = quantize_groups(x, counts=mm) if self.fp8 else x.contiguous()
        h, _ = self._gemm(a, "w13", None, masked_m=mm)
        # S5: the masked GEMM returns overlap metadata only when given overlap arguments,
        # which this plugin never passes (its plans have no down-GEMM overlap): nothing to read.
        y, _ = self._gemm(self._activation(h, mm), "w2", None, masked_m=mm)
        return y  # rows past masked_m are unspecified, as DeepEP's combine expects

    # -- FP8 tokens as they travel (the variants declare quantized_input) ------------------
    # The dispatcher hands over e4m3 data with one fp32 scale per 1x128 group, the operand
    # DeepGEMM's first GEMM takes: no dequantize / requantize in between. (Entry points of
    # their own, so the bf16-token paths above stay as they are.)
    def run_masked_quantized(self, quantized, masked_m: torch.Tensor) -> torch.Tensor:
        """``(q [E, M, H], scales [E, M, H / 128])`` -> ``[E, M, H]`` bf16."""
        if not (self.fp8 and self.masked):  # a bf16 layer: the base dequantizes
            return super().run_masked_quantized(quantized, masked_m)
        q, s = quantized
        rows = q.shape[1]
        if rows % MASKED_ROWS:  # whole tiles, as in run_masked
            pad = round_up(rows, MASKED_ROWS) - rows
            q = torch.nn.functional.pad(q.view(torch.uint8), (0, 0, 0, pad)).view(q.dtype)
            s = torch.nn.functional.pad(s, (0, 0, 0, pad))
            return self.run_masked_quantized((q, s), masked_m)[:, :rows]
        mm = masked_m.to(torch.int32).contiguous()
        h, _ = self._gemm((q, s), "w13", None, masked_m=mm)
        y, _ = self._gemm(self._activation(h, mm), "w2", None, masked_m=mm)
        return y

    def run_contiguous_quantized(self, quantized, offsets: torch.Tensor) -> torch.Tensor:
        """``(q [N, H], scales [N, H / 128])`` grouped per expert -> ``[N, H]`` bf16."""
        if not self.fp8 or self.masked:
            return super().run_contiguous_quantized(quantized, offsets)
        q, s = quantized
        if q.shape[0] == 0:
            return torch.zeros(0, self.spec.hidden_size, dtype=torch.bfloat16, device=q.device)
        dst, m_indices, rows = self._aligned(offsets, q.shape[0])
        aq = torch.zeros(rows, q.shape[1], dtype=torch.uint8, device=q.device)
        aq[dst] = q.view(torch.uint8)  # byte copies: index_put has no fp8 kernel everywhere
        a_s = torch.zeros(rows, s.shape[1], dtype=torch.float32, device=q.device)
        a_s[dst] = s.float()
        return self._contiguous_gemms((aq.view(q.dtype), a_s), m_indices)[dst]

    def _aligned(self, offsets: torch.Tensor, n: int):
        """DeepGEMM's aligned contiguous layout for ``n`` rows grouped by ``offsets``: each
        row's destination, the per-row expert index (-1: padding) and the row count."""
        counts = offsets.diff()
        padded = (counts + self.align - 1) // self.align * self.align
        starts = padded.cumsum(0) - padded
        expert = expert_of_rows(offsets, n)
        dst = starts[expert] + torch.arange(n, device=offsets.device) - offsets[:-1][expert]
        rows = int(padded.sum())
        m_indices = torch.full((rows,), -1, dtype=torch.int32, device=offsets.device)
        m_indices[dst] = expert.to(torch.int32)
        return dst, m_indices, rows
