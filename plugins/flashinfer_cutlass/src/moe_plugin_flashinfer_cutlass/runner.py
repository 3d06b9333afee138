"""The runner: one call into FlashInfer's CUTLASS fused MoE (routing permute, both grouped
GEMMs, activation, finalize with the top-k weights) per forward."""

from __future__ import annotations

import torch

from moe_core.runner import GroupedRunner, expert_of_rows
from moe_core.spec import Activation

from .build import load
from .constraints import FP8_BLOCK

#: FlashInfer's ``ActivationType`` values (flashinfer/fused_moe/core.py).
SWIGLU, RELU2 = 3, 6


class CutlassFusedMoeRunner(GroupedRunner):
    """Standard layout natively (global expert ids; experts of other EP ranks are skipped
    by the kernel); the contiguous layout as a top-1 call with unit weights."""

    def __init__(self, plan, weights):
        super().__init__(plan, weights)
        s = self.spec
        fp8 = plan.variant == FP8_BLOCK
        module = load(plan.variant)
        self.op = module.init(torch.bfloat16, torch.float8_e4m3fn if fp8 else torch.bfloat16,
                              torch.bfloat16, fp8, False, False)
        self.quant_scales = [weights.w13_scale, weights.w2_scale] if fp8 else None
        self.activation = RELU2 if s.activation is Activation.RELU2 else SWIGLU
        self.swiglu = [None, None, None]
        if s.activation is Activation.SWIGLU_LIMIT:
            alpha, beta = (1.0, 0.0) if s.swiglu_alpha is None else (s.swiglu_alpha, 1.0)
            per_expert = lambda v: torch.full((s.local_experts,), v, dtype=torch.float32,  # noqa: E731
                                              device=weights.device)
            self.swiglu = [per_expert(alpha), per_expert(beta), per_expert(s.swiglu_limit)]
        # PDL lets the next kernel's prologue overlap this one's tail (SM90+).
        self.enable_pdl = True

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        s, w = self.spec, self.weights
        out = torch.empty(x.shape[0], s.hidden_size, dtype=torch.bfloat16, device=x.device)
        if x.shape[0] == 0:
            return out
        self.op.run_moe(
            out, x.to(torch.bfloat16).contiguous(), topk_ids.to(torch.int32).contiguous(),
            topk_weights.to(torch.float32).contiguous(), w.w13, w.w13_bias, w.w2, w.w2_bias,
            self.quant_scales, None, *self.swiglu,
            1, 0, s.ep_size, s.ep_rank, 1, 0, False, False, [-1, -1], self.enable_pdl, self.activation)
        return out

    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        ids = (expert_of_rows(offsets, x.shape[0]) + self.spec.first_expert)[:, None]
        return self(x, torch.ones_like(ids, dtype=torch.float32), ids)
