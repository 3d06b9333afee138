"""The DeepGEMM runner: two grouped GEMMs around the activation step, per the plan."""

from __future__ import annotations

import torch

from moe_core.activations import apply_activation
from moe_core.runner import GroupedRunner, masked_layout, valid_rows
from moe_core.sizes import round_up
from moe_core.spec import Quant

from .constraints import MASKED_ROWS
from moe_core.kernels.group_quant import quantize_groups

RECIPE = (1, 128, 128)  # 1x128 activation groups, 128x128 weight blocks


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
        self.expected_m = max(1, -(-s.max_tokens * s.ep_size * s.top_k // s.num_experts))
        #: (block_m, threshold) of the last masked down GEMM, only when overlap is on (S5).

    # -- pieces --------------------------------------------------------------------
    def _activation(self, h: torch.Tensor, counts: torch.Tensor | None = None):
        if self.fused:
            from .fused_act import fused_silu_mul_quant

            return fused_silu_mul_quant(h, self.spec.swiglu_limit, self.spec.swiglu_alpha, counts)
        a = apply_activation(self.spec, h)  # bf16, as the separate silu_and_mul kernels do
        return quantize_groups(a, counts=counts) if self.fp8 else a

    def _gemm(self, a, which: str, layout, *, masked_m=None):
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
        if self.fp8:
            ret = dg.m_grouped_fp8_gemm_nt_masked(a, (w, getattr(self.weights, which + "_scale")), d,
                                                  masked_m, self.expected_m, recipe=RECIPE)
        else:
            ret = dg.m_grouped_bf16_gemm_nt_masked(a, w, d, masked_m, self.expected_m)
        return d, ret

    # -- layouts ---------------------------------------------------------------------
    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if self.masked:
            masked, counts = masked_layout(x, offsets, round_up(max(int(offsets.diff().max()), 1), MASKED_ROWS))
            out = self.run_masked(masked, counts)
            return out[valid_rows(counts, out.shape[1])]
        E, H = self.spec.local_experts, self.spec.hidden_size
        if x.shape[0] == 0:
            return x.new_zeros(0, H)
        counts = offsets.diff()
        padded = (counts + self.align - 1) // self.align * self.align
        starts = padded.cumsum(0) - padded
        expert = torch.repeat_interleave(torch.arange(E, device=x.device), counts)
        dst = starts[expert] + torch.arange(x.shape[0], device=x.device) - offsets[:-1][expert]
        rows = int(padded.sum())
        m_indices = torch.full((rows,), -1, dtype=torch.int32, device=x.device)
        m_indices[dst] = expert.to(torch.int32)
        if self.fp8:  # gather into the aligned layout and quantize in one pass
            src = torch.full((rows,), -1, dtype=torch.int64, device=x.device)
            src[dst] = torch.arange(x.shape[0], device=x.device)
            a = quantize_groups(x, src)
        else:
            a = x.new_zeros(rows, H)
            a[dst] = x
        h, _ = self._gemm(a, "w13", m_indices)
        y, _ = self._gemm(self._activation(h), "w2", m_indices)
        return y[dst]

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
