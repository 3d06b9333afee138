"""The kernels moe-core's plugins wrap, called directly (no MoELayer, no runner, no checks)
on inputs already in the kernel's own layout: what moe-core's wrapping costs is the gap to
the same kernel's row through moe-core.

* DeepGEMM: ``m_grouped_{bf16,fp8}_gemm_nt_contiguous`` / ``..._masked``, the plugin's own
  activation step between them (``moe_plugin_deepgemm.runner.activation_step``: the fused
  SiLU-and-mul + FP8 quant kernel where the plugin would use it, else the activation on the
  rows the GEMM reads, then the 1x128 quant), on rows already aligned per expert (the
  contiguous layout, ``m_indices``) or in per-expert buffers (the masked layout); fp8 rows
  arrive quantized, as DeepEP delivers them.
* FlashInfer CUTLASS fused MoE: one ``run_moe`` call on int32 ids, fp32 top-k weights and
  weights already in the kernel's layout (the plugin's ``process_weights``), as the
  plugin's runner makes it.

Each call returns what the kernel returns; ``to_tokens`` turns it back into ``[T, H]``
(the weighted top-k sum) for the benchmark's numerics check, outside the timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from moe_core.kernels.align import align_by_expert
from moe_core.runner import masked_layout, offsets_from_counts
from moe_core.sizes import round_up
from moe_core.spec import MoESpec, Quant
from moe_core.weights import MoEWeights

#: DeepGEMM's SM90 masked kernels store whole 128-row tiles (moe_plugin_deepgemm.constraints).
MASKED_ROWS = 128
RECIPE = (1, 128, 128)


@dataclass
class Prepared:
    """A timed call on inputs bound in, and how its output becomes ``[T, H]``."""

    call: Callable[[], torch.Tensor]
    to_tokens: Callable[[torch.Tensor], torch.Tensor]
    note: str | None = None


def weighted_slots(y_slots: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """``[T * k, H]`` expert outputs in slot order -> ``[T, H]`` weighted top-k sums (fp32)."""
    T, k = topk_weights.shape
    return (y_slots.float().view(T, k, -1) * topk_weights.float()[..., None]).sum(1)


class DeepGemmDirect:
    """DeepGEMM's two grouped GEMMs around the activation, as the plugin's runner calls them."""

    def __init__(self, spec: MoESpec, weights: MoEWeights, *, fused: bool):
        import deep_gemm

        self.dg, self.spec, self.w = deep_gemm, spec, weights
        self.fp8 = spec.quant is Quant.FP8_BLOCK128
        self.fused = fused
        self.align = deep_gemm.get_mk_alignment_for_contiguous_layout()

    def _activation(self, h: torch.Tensor, counts: torch.Tensor | None = None,
                    m_indices: torch.Tensor | None = None):
        from moe_plugin_deepgemm.runner import activation_step

        return activation_step(self.spec, h, fused=self.fused, counts=counts, m_indices=m_indices)

    def _b(self, which: str):
        w = getattr(self.w, which)
        return (w, getattr(self.w, which + "_scale")) if self.fp8 else w

    def contiguous(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> Prepared:
        from moe_core.kernels.group_quant import quantize_groups

        s, dg = self.spec, self.dg
        T, k = topk_ids.shape
        routes = align_by_expert(topk_ids, s.first_expert, s.local_experts, self.align)
        rows = int(routes.rows_used)  # inputs are built once, outside the timing
        slots = routes.sorted_slots[:rows].long()
        valid = slots < T * k
        src = torch.where(valid, slots // k, -1)
        m_indices = torch.where(valid, routes.block_expert.repeat_interleave(self.align)[:rows], -1)
        m_indices = m_indices.to(torch.int32).contiguous()
        if self.fp8:
            a = quantize_groups(x, src)
        else:
            a = torch.where(valid[:, None], x.index_select(0, src.clamp(min=0)), x.new_zeros(()))
        R, H = s.w13_rows, s.hidden_size
        gemm = dg.m_grouped_fp8_gemm_nt_contiguous if self.fp8 else dg.m_grouped_bf16_gemm_nt_contiguous
        kw = {"recipe": RECIPE} if self.fp8 else {}

        def call() -> torch.Tensor:
            h = torch.empty(rows, R, dtype=torch.bfloat16, device=x.device)
            gemm(a, self._b("w13"), h, m_indices, **kw)
            y = torch.empty(rows, H, dtype=torch.bfloat16, device=x.device)
            gemm(self._activation(h, m_indices=m_indices), self._b("w2"), y, m_indices, **kw)
            return y

        slot_rows = routes.slot_rows.long()
        return Prepared(call, lambda y: weighted_slots(y.index_select(0, slot_rows), topk_weights),
                        f"{rows} aligned rows (M alignment {self.align})")

    def masked(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> Prepared:
        from moe_core.kernels.group_quant import quantize_groups

        s, dg = self.spec, self.dg
        T, k = topk_ids.shape
        E = s.local_experts
        routes = align_by_expert(topk_ids, s.first_expert, E, 1)  # grouped, unpadded
        counts = routes.counts
        M = round_up(max(int(counts.max()), 1), MASKED_ROWS)
        offsets = offsets_from_counts(counts)
        rows = x.index_select(0, routes.sorted_slots.long() // k)
        xm, _ = masked_layout(rows, offsets, M)
        mm = counts.to(torch.int32).contiguous()
        a = quantize_groups(xm, counts=mm) if self.fp8 else xm
        expected_m = max(1, -(-T * k // E))
        R, H = s.w13_rows, s.hidden_size
        gemm = dg.m_grouped_fp8_gemm_nt_masked if self.fp8 else dg.m_grouped_bf16_gemm_nt_masked
        kw = {"recipe": RECIPE} if self.fp8 else {}

        def call() -> torch.Tensor:
            h = torch.empty(E, M, R, dtype=torch.bfloat16, device=x.device)
            gemm(a, self._b("w13"), h, mm, expected_m, **kw)
            y = torch.empty(E, M, H, dtype=torch.bfloat16, device=x.device)
            gemm(self._activation(h, mm), self._b("w2"), y, mm, expected_m, **kw)
            return y

        # slot -> (expert, rank within the expert) -> its row of the [E * M, H] buffer
        row = routes.slot_rows.long()
        expert = torch.searchsorted(offsets[1:], row, right=True)
        position = expert * M + row - offsets.index_select(0, expert)
        return Prepared(call, lambda y: weighted_slots(y.view(E * M, H).index_select(0, position), topk_weights),
                        f"{M} rows per expert buffer, expected_m {expected_m}")


class FlashInferDirect:
    """One ``run_moe`` of FlashInfer's CUTLASS fused MoE on weights the plugin processed."""

    def __init__(self, plan, processed: MoEWeights):
        from moe_plugin_flashinfer_cutlass.runner import CutlassFusedMoeRunner

        # The runner builds the module for the plan's kind and the per-expert SwiGLU
        # arguments; only its kernel handle and those arguments are used below.
        self.r = CutlassFusedMoeRunner(plan, processed)
        self.spec, self.w = plan.spec, processed

    def standard(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> Prepared:
        r, s, w = self.r, self.spec, self.w

        def call() -> torch.Tensor:
            # The kernel takes int32 ids: the benchmark's routing (torch.topk's) is int64, so
            # the conversion is part of calling it on these inputs, as it is in the layer.
            out = torch.empty(x.shape[0], s.hidden_size, dtype=torch.bfloat16, device=x.device)
            r.op.run_moe(out, x.to(torch.bfloat16).contiguous(), topk_ids.to(torch.int32).contiguous(),
                         topk_weights.to(torch.float32).contiguous(), w.w13, w.w13_bias, w.w2, w.w2_bias,
                         r.quant_scales, None,
                         *r.swiglu, 1, 0, s.ep_size, s.ep_rank, 1, 0, False, False, [-1, -1],
                         r.enable_pdl, r.activation)
            return out

        return Prepared(call, lambda out: out.float())
