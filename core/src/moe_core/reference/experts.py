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
        """The loop's computation in bf16 GEMMs: biases added in fp32, as the loop does."""
        w = self.weights
        ends = offsets[1:].to(torch.int32)
        h = torch._grouped_mm(x, w.w13.transpose(1, 2), offs=ends).float()
        if w.w13_bias is not None:
            h = h + _rows_of(w.w13_bias, offsets, x.shape[0])
        a = apply_activation(self.spec, h).to(torch.bfloat16)
        y = torch._grouped_mm(a, w.w2.transpose(1, 2), offs=ends)
        if self.add_w2_bias:
            y = y.float() + _rows_of(w.w2_bias, offsets, x.shape[0])
        return y.to(x.dtype)


def _rows_of(bias: torch.Tensor, offsets: torch.Tensor, rows: int) -> torch.Tensor:
    """``[rows, N]`` fp32: each row's expert bias (``bias [E, N]``); zero past the last
    expert's rows, which a contiguous buffer may carry as padding."""
    expert = torch.searchsorted(offsets[1:], torch.arange(rows, device=offsets.device), right=True)
    padded = torch.cat([bias.float(), bias.new_zeros(1, bias.shape[1], dtype=torch.float32)])
    return padded.index_select(0, expert)
