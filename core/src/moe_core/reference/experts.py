"""The reference expert computation."""

from __future__ import annotations

import torch

from ..activations import apply_activation
from ..quant import dequantize_weights, fake_quantize_activation
from ..runner import GroupedRunner


class ReferenceRunner(GroupedRunner):
    """fp32 per-expert matmuls on dequantized weights (``loop``), or bf16
    ``torch._grouped_mm`` (``grouped_mm``). Activations are fake-quantized exactly as the
    spec's format defines, so quantized backends can be compared with it."""

    def __init__(self, plan, weights, *, grouped_mm: bool = False):
        super().__init__(plan, weights)
        self.grouped_mm = grouped_mm
        self.intermediate = plan.intermediate_padded
        # Under TP every rank holds the full w2 bias; only one may add it to the partial sums.
        self.add_w2_bias = weights.w2_bias is not None and self.spec.moe_tp_rank == 0

    def run_contiguous(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if self.grouped_mm:
            return self._grouped(x, offsets)
        spec, w = self.spec, self.weights
        y = torch.zeros(x.shape[0], spec.hidden_size, dtype=x.dtype, device=x.device)
        bounds = offsets.tolist()
        for e in range(spec.local_experts):
            lo, hi = bounds[e], bounds[e + 1]
            if lo == hi:
                continue
            w13, w2 = dequantize_weights(spec, w, slice(e, e + 1), torch.float32, self.intermediate)
            h = fake_quantize_activation(spec.quant, x[lo:hi].float()) @ w13[0].T
            if w.w13_bias is not None:
                h = h + w.w13_bias[e]
            a = fake_quantize_activation(spec.quant, apply_activation(spec, h))
            out = a @ w2[0].T
            if self.add_w2_bias:
                out = out + w.w2_bias[e]
            y[lo:hi] = out.to(x.dtype)
        return y

    def _grouped(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        w = self.weights
        ends = offsets[1:].to(torch.int32)
        h = torch._grouped_mm(x, w.w13.transpose(1, 2), offs=ends)
        a = apply_activation(self.spec, h.float()).to(torch.bfloat16)
        return torch._grouped_mm(a, w.w2.transpose(1, 2), offs=ends)
